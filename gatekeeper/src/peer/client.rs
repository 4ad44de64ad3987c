//! The FetchShare client: how a sealed node asks a peer for its share of a dealing.

use crate::attestation::digest_of;
use crate::enclave::Enclave;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::peer_service_client::PeerServiceClient;
use gatekeeper_raft::state::{Bytes32, EpochRecord};
use keyring::envelope::{Envelope, ENVELOPE_VERSION};
use keyring::sign::{verify, ShareRequest, ShareResponse, SigningPurpose};
use keyring::{GatekeeperId, Signature, Sr25519PublicKey};
use rand_core::RngCore;
use std::time::Duration;

/// The peer a share is asked from.
#[derive(Clone, Copy, Debug)]
pub struct SharePeer<'a> {
    /// Its registered identity key (signs the response).
    pub identity: &'a Bytes32,
    /// Its cluster (Raft) address, where PeerService is served.
    pub address: &'a str,
    /// TLS towards it (none: development plaintext).
    pub tls: Option<&'a crate::tls::ClientTls>,
    /// The call's deadline.
    pub timeout: Duration,
}

/// Asks `peer` for its share of `epoch`'s current dealing; verifies the response signature.
/// Returns (index, envelope sealed to this node).
pub async fn fetch_share(
    enclave: &dyn Enclave,
    me: u64,
    gk: &Bytes32,
    epoch: &EpochRecord,
    peer: SharePeer<'_>,
    now_ms: u64,
) -> Result<(u8, Envelope), String> {
    let SharePeer {
        identity: peer_identity,
        address,
        tls,
        timeout,
    } = peer;
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let hpke = enclave.hpke_public_key();
    let identity = enclave.identity_public_key();
    let rd = keyring::sign::report_data(identity.as_bytes(), &hpke, &nonce);
    let evidence = enclave.evidence(&rd).ok().map(|(kind, e)| pb::Attestation {
        kind,
        evidence: e,
        collateral: vec![],
    });
    let body = ShareRequest {
        gatekeeper_id: GatekeeperId(gk.0),
        requester_node_id: me,
        epoch: epoch.epoch,
        generation: epoch.dealing.generation,
        requester_hpke: hpke,
        nonce,
        timestamp_ms: now_ms,
        evidence: digest_of(&evidence),
    };
    let signature = enclave.sign_identity(SigningPurpose::ShareRequest, &body.signing_bytes());
    let endpoint = match tls {
        Some(tls) => tls
            .endpoint(address, gatekeeper_raft::network::host_of(address))
            .map_err(|e| e.to_string())?,
        None => tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?,
    };
    let ch = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let resp = PeerServiceClient::new(ch)
        .fetch_share(pb::FetchShareRequest {
            gatekeeper_id: gk.0.to_vec(),
            requester_node_id: me,
            epoch: epoch.epoch,
            generation: epoch.dealing.generation,
            requester_hpke_public_key: hpke.as_bytes().to_vec(),
            nonce: nonce.to_vec(),
            timestamp_ms: body.timestamp_ms,
            evidence,
            signature: signature.0.to_vec(),
        })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let env = resp.sealed_share.ok_or("response has no sealed_share")?;
    let env = Envelope::from_parts(env.version, &env.encapped_key, env.ciphertext)
        .map_err(|e| e.to_string())?;
    if env.version != ENVELOPE_VERSION {
        return Err("unknown envelope version".into());
    }
    let index = u8::try_from(resp.share_index).map_err(|_| "share index above 255")?;
    let check = ShareResponse {
        responder_node_id: resp.responder_node_id,
        epoch: resp.epoch,
        generation: resp.generation,
        share_index: index,
        sealed_share: env.clone(),
        request_digest: body.digest(),
    };
    let peer = Sr25519PublicKey::from_slice(&peer_identity.0).map_err(|e| e.to_string())?;
    let sig = Signature::from_slice(&resp.signature).map_err(|e| e.to_string())?;
    verify(
        &peer,
        SigningPurpose::ShareResponse,
        &check.signing_bytes(),
        &sig,
    )
    .map_err(|_| "share response signature does not verify".to_string())?;
    if resp.epoch != epoch.epoch || resp.generation != epoch.dealing.generation {
        return Err("share response is for another dealing".into());
    }
    Ok((index, env))
}
