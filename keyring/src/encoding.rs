//! Canonical, domain-separated byte encodings.
//!
//! Everything Gatekeeper signs, hashes into a KDF `info`, or binds as AEAD associated data is built
//! with [`Canonical`]: a domain label followed by fields, each written with its length, so two
//! different field lists can never encode to the same bytes, and an encoding made for one domain
//! never equals one made for another. The exact layout (docs/design.md, "Canonical encoding"):
//!
//! ```text
//! encoding = u16be(len(domain)) || domain || field*
//! field    = u32be(len(bytes)) || bytes        (byte strings, fixed-size keys and ids alike)
//!          | u64be(value)                        (integers: always 8 bytes)
//!          | 0x00 | 0x01 || u64be(value)         (optional integers)
//! ```

/// Builder for a canonical encoding. See the module documentation for the layout.
#[derive(Clone)]
pub struct Canonical {
    buf: Vec<u8>,
}

impl Canonical {
    /// Starts an encoding in `domain` (an ASCII label such as `"gatekeeper/v1/key-request"`).
    pub fn new(domain: &str) -> Self {
        let d = domain.as_bytes();
        let len = u16::try_from(d.len()).expect("domain labels are short constants");
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(d);
        Canonical { buf }
    }

    /// Appends a length-prefixed byte string.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        let len = u32::try_from(b.len()).expect("fields are far below 4 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends a 64-bit integer, big-endian.
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an optional 64-bit integer: `0x00` when absent, `0x01 || u64be` when present.
    pub fn opt_u64(mut self, v: Option<u64>) -> Self {
        match v {
            None => self.buf.push(0),
            Some(v) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
        self
    }

    /// The finished encoding.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let e = Canonical::new("d")
            .bytes(b"ab")
            .u64(1)
            .opt_u64(None)
            .finish();
        assert_eq!(
            e,
            [0, 1, b'd', 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = Canonical::new("d").bytes(b"ab").bytes(b"c").finish();
        let b = Canonical::new("d").bytes(b"a").bytes(b"bc").finish();
        assert_ne!(a, b);
        let c = Canonical::new("x").bytes(b"ab").finish();
        let d = Canonical::new("xa").bytes(b"b").finish();
        assert_ne!(c, d);
    }
}
