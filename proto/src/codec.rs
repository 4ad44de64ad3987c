//! The protobuf codec every generated Gatekeeper service and client uses: prost's, except that a
//! request that does not decode is `INVALID_ARGUMENT` with the stable error code
//! [`MALFORMED_REQUEST_CODE`] in the `gatekeeper-error-code` metadata entry (prost's codec answers
//! `INTERNAL`, which would blame the server for the caller's bytes).

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The stable error code of an undecodable message (the node's error catalog uses the same one).
pub const MALFORMED_REQUEST_CODE: &str = "MALFORMED_REQUEST";

/// The metadata key that carries stable error codes.
pub const ERROR_CODE_METADATA: &str = "gatekeeper-error-code";

/// prost's codec with [`MALFORMED_REQUEST_CODE`] for undecodable messages.
#[derive(Debug, Clone)]
pub struct GatekeeperCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for GatekeeperCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for GatekeeperCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.0.decoder())
    }
}

/// Decodes with prost; a decode failure is `INVALID_ARGUMENT` + [`MALFORMED_REQUEST_CODE`].
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| malformed(s.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The status of an undecodable message.
pub fn malformed(detail: &str) -> Status {
    let mut s = Status::invalid_argument(format!("the message does not decode: {detail}"));
    s.metadata_mut().insert(
        ERROR_CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(MALFORMED_REQUEST_CODE),
    );
    s
}
