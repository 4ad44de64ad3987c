//! Unit tests of the TLS core without sockets: loading and its errors, issuance, policies,
//! reload. The loopback tests (real handshakes through tonic) are in `gatekeeper/tests/tls.rs`.

use super::issue::{Authority, Issued, Validity};
use super::server::name_allowed;
use super::*;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, X509Certificate};

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    crate::clock::now()
}

fn valid() -> Validity {
    Validity::days_from(now(), 30)
}

/// Writes a certificate and its key as `<dir>/<name>.pem` and `<dir>/<name>.key`.
fn write(dir: &Path, name: &str, i: &Issued) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &i.cert_pem).unwrap();
    std::fs::write(&k, i.key_pem.as_bytes()).unwrap();
    (c, k)
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Authority,
    ca_pem: PathBuf,
    node: (PathBuf, PathBuf),
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_issued) = Authority::generate("Test CA", valid()).unwrap();
    let (ca_pem, _) = write(dir.path(), "ca", &ca_issued);
    let node = ca
        .node(
            "node-1",
            &["127.0.0.1".into(), "gk1.example".into()],
            valid(),
        )
        .unwrap();
    let node = write(dir.path(), "node-1", &node);
    Fixture {
        dir,
        ca,
        ca_pem,
        node,
    }
}

#[test]
fn every_loading_error_names_the_file_and_the_problem() {
    let f = fixture();
    let d = f.dir.path();
    let (cert, key) = &f.node;

    let missing = d.join("nope.pem");
    let e = load_certs(&missing).unwrap_err();
    assert!(matches!(e, TlsError::Missing { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("{}: no such file", missing.display())
    );

    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "hello, not a certificate\n").unwrap();
    let e = load_certs(&garbage).unwrap_err();
    assert!(matches!(e, TlsError::NotPem { .. }), "{e:?}");
    assert!(e
        .to_string()
        .starts_with(&format!("{}: not PEM", garbage.display())));

    let der = d.join("cert.der");
    let der_bytes = load_certs(cert).unwrap().remove(0);
    std::fs::write(&der, der_bytes.as_ref()).unwrap();
    assert!(matches!(
        load_certs(&der).unwrap_err(),
        TlsError::NotPem { .. }
    ));

    let broken = d.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot*base64*at*all\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = load_certs(&broken).unwrap_err();
    assert!(matches!(e, TlsError::NotPem { .. }), "{e:?}");

    let e = load_private_key(cert).unwrap_err();
    assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: holds no private key (PEM sections found: Certificate)",
            cert.display()
        )
    );
    let e = load_certs(key).unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
    assert!(e.to_string().contains("holds no certificate"), "{e}");

    let two_keys = d.join("two.key");
    let k = std::fs::read_to_string(key).unwrap();
    std::fs::write(&two_keys, format!("{k}{k}")).unwrap();
    assert!(matches!(
        load_private_key(&two_keys).unwrap_err(),
        TlsError::SeveralKeys { count: 2, .. }
    ));

    let bad_x509 = d.join("bad-x509.pem");
    std::fs::write(
        &bad_x509,
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = load_certs(&bad_x509).unwrap_err();
    assert!(
        matches!(e, TlsError::BadCertificate { index: 1, .. }),
        "{e:?}"
    );

    // A key of another certificate.
    let other = f.ca.node("node-2", &["127.0.0.1".into()], valid()).unwrap();
    let (_, other_key) = write(d, "node-2", &other);
    let e = Identity::load(cert, &other_key, now()).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: private key does not match the certificate in {}",
            other_key.display(),
            cert.display()
        )
    );

    // Validity is checked at load time.
    let e = Identity::load(cert, key, now() + 60 * DAY).unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e:?}");
    assert!(e.to_string().contains("CN=node-1"), "{e}");
    assert!(e.to_string().contains("expired at"), "{e}");
    let e = Identity::load(cert, key, now() - 2 * DAY).unwrap_err();
    assert!(matches!(e, TlsError::NotYetValid { .. }), "{e:?}");
    assert!(e.to_string().contains("is not valid before"), "{e}");
    let e = load_ca_bundle(&f.ca_pem, now() + 60 * DAY).unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e:?}");

    // A leaf is not a CA bundle.
    let e = load_ca_bundle(cert, now()).unwrap_err();
    assert!(matches!(e, TlsError::NotCa { .. }), "{e:?}");
    assert!(e.to_string().contains("not a CA certificate"), "{e}");

    // And the good files load.
    let id = Identity::load(cert, key, now()).unwrap();
    assert_eq!(id.chain().len(), 1);
    assert_eq!(load_ca_bundle(&f.ca_pem, now()).unwrap().len(), 1);
}

#[test]
fn a_certificate_file_may_hold_its_key_and_a_chain() {
    let f = fixture();
    let combined = f.dir.path().join("combined.pem");
    let cert = std::fs::read_to_string(&f.node.0).unwrap();
    let key = std::fs::read_to_string(&f.node.1).unwrap();
    let ca = std::fs::read_to_string(&f.ca_pem).unwrap();
    std::fs::write(&combined, format!("{key}{cert}{ca}")).unwrap();
    let id = Identity::load(&combined, &combined, now()).unwrap();
    assert_eq!(id.chain().len(), 2);
    assert_eq!(id.leaf().common_name.as_deref(), Some("node-1"));
}

#[test]
fn debug_output_never_shows_a_private_key() {
    let f = fixture();
    let key_pem = std::fs::read_to_string(&f.node.1).unwrap();
    let body_line = key_pem.lines().nth(1).unwrap().to_string();
    let id = Identity::load(&f.node.0, &f.node.1, now()).unwrap();
    let client = ClientTls::load(&f.ca_pem, Some((&f.node.0, &f.node.1)), now()).unwrap();
    let issued = f.ca.operator("alice", valid()).unwrap();
    for text in [
        format!("{id:?}"),
        format!("{:?}", id.key()),
        format!("{:?}", load_private_key(&f.node.1).unwrap()),
        format!("{client:?}"),
        format!("{issued:?}"),
        format!("{:?}", f.ca),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&body_line), "{text}");
        assert!(
            !text.contains(&issued.key_pem.lines().nth(1).unwrap().to_string()),
            "{text}"
        );
    }
}

#[test]
fn spki_sha256_is_the_hash_of_the_public_key_info() {
    let f = fixture();
    let der = load_certs(&f.node.0).unwrap().remove(0);
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&f.node.1).unwrap()).unwrap();
    let want: [u8; 32] =
        sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
    assert_eq!(spki_sha256(&der).unwrap(), want);
    // It names the key: another certificate for another key differs.
    let other = f.ca.node("node-1", &["127.0.0.1".into()], valid()).unwrap();
    assert_ne!(other.info.spki_sha256, want);
    assert!(spki_sha256(b"not a certificate").is_err());
}

#[test]
fn issued_certificates_carry_the_right_usages_and_names() {
    let f = fixture();
    let (_, ca_issued) = Authority::generate("Some CA", valid()).unwrap();
    let node =
        f.ca.node(
            "node-1",
            &["10.0.0.1".into(), "gk1.example".into()],
            valid(),
        )
        .unwrap();
    let op = f.ca.operator("alice", valid()).unwrap();
    let parse = |pem: &str| {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let (ca_der, node_der, op_der) = (
        parse(&ca_issued.cert_pem),
        parse(&node.cert_pem),
        parse(&op.cert_pem),
    );
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
    let (_, n) = X509Certificate::from_der(&node_der).unwrap();
    assert!(!n.is_ca());
    let eku = n.extended_key_usage().unwrap().unwrap().value.clone();
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(node.info.dns_names, ["gk1.example"]);
    assert_eq!(
        node.info.ip_addresses,
        ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(n.issuer().to_string(), "O=Gatekeeper, CN=Test CA");
    let (_, o) = X509Certificate::from_der(&op_der).unwrap();
    let eku = o.extended_key_usage().unwrap().unwrap().value.clone();
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(op.info.common_name.as_deref(), Some("alice"));

    // A CA restored from its PEM signs certificates that chain to it.
    let ca_cert = std::fs::read_to_string(&f.ca_pem).unwrap();
    let ca_key = f.dir.path().join("ca.key");
    let again = Authority::from_pem(&ca_cert, &std::fs::read_to_string(&ca_key).unwrap()).unwrap();
    let n2 = again
        .node("node-2", &["127.0.0.1".into()], valid())
        .unwrap();
    let (c, k) = write(f.dir.path(), "node-2", &n2);
    ServerTls::mutual(&c, &k, &f.ca_pem).build(now()).unwrap();
    // A key that is not the CA's is refused.
    let e = Authority::from_pem(&ca_cert, &n2.key_pem).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    // Bad names and validity are refused.
    assert!(f.ca.operator("", valid()).is_err());
    assert!(f.ca.operator("a/b", valid()).is_err());
    let backwards = Validity {
        not_before: now(),
        not_after: now() - DAY,
    };
    assert!(f.ca.operator("alice", backwards).is_err());
}

#[test]
fn the_allowlist_matches_the_common_name_or_a_dns_name() {
    let f = fixture();
    let op = f.ca.operator("alice", valid()).unwrap().info;
    let node =
        f.ca.node(
            "node-1",
            &["GK1.example".into(), "127.0.0.1".into()],
            valid(),
        )
        .unwrap()
        .info;
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(name_allowed(&op, &list(&["bob", "alice"])));
    assert!(
        !name_allowed(&op, &list(&["Alice"])),
        "the CN compares exactly"
    );
    assert!(!name_allowed(&op, &list(&["bob"])));
    assert!(
        name_allowed(&node, &list(&["gk1.example"])),
        "DNS names ignore case"
    );
    assert!(
        !name_allowed(&node, &list(&["127.0.0.1"])),
        "IP SANs are not names"
    );
    assert!(!name_allowed(&op, &[]));
}

#[test]
fn the_three_policies_build_and_bad_settings_are_refused() {
    let f = fixture();
    let (c, k) = &f.node;
    for tls in [
        ServerTls::server_only(c, k),
        ServerTls::mutual(c, k, &f.ca_pem),
        ServerTls::mutual_with_names(c, k, &f.ca_pem, vec!["alice".into()]),
    ] {
        let cfg = tls.build(now()).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(cfg.send_tls13_tickets, 0);
    }
    let e = ServerTls::mutual_with_names(c, k, &f.ca_pem, vec![])
        .build(now())
        .unwrap_err();
    assert!(e.to_string().contains("allowlist is empty"), "{e}");
    let e = ServerTls::mutual(c, k, c).build(now()).unwrap_err();
    assert!(matches!(e, TlsError::NotCa { .. }), "{e:?}");
    let e = ServerTls::mutual(c, k, f.dir.path().join("missing-ca.pem"))
        .build(now())
        .unwrap_err();
    assert!(matches!(e, TlsError::Missing { .. }), "{e:?}");
}

#[test]
fn client_endpoints_refuse_plaintext_schemes_and_bad_server_names() {
    let f = fixture();
    let client = ClientTls::load(&f.ca_pem, None, now()).unwrap();
    let e = client
        .endpoint("http://127.0.0.1:1", "127.0.0.1")
        .unwrap_err();
    assert!(e.to_string().contains("needs an https:// URI"), "{e}");
    let e = client.endpoint("127.0.0.1:1", "not a name!").unwrap_err();
    assert!(e.to_string().contains("server name"), "{e}");
    let ep = client.endpoint("127.0.0.1:1", "gk1.example").unwrap();
    assert_eq!(ep.uri().scheme_str(), Some("https"));
    client
        .endpoint("https://gk1.example:7000", "gk1.example")
        .unwrap();
    let cfg = client.rustls_config().unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(!cfg.client_auth_cert_resolver.has_certs());
    let with_id = ClientTls::load(&f.ca_pem, Some((&f.node.0, &f.node.1)), now()).unwrap();
    assert!(with_id
        .rustls_config()
        .unwrap()
        .client_auth_cert_resolver
        .has_certs());
}

#[test]
fn reload_swaps_only_when_every_file_loads() {
    let f = fixture();
    let (c, k) = &f.node;
    let r = Reloadable::load("cluster", ServerTls::mutual(c, k, &f.ca_pem)).unwrap();
    let first = r.current();
    let first_leaf = r.leaf();
    assert_eq!(r.generation(), 0);
    assert_eq!(r.label(), "cluster");

    // A new certificate and key: swapped.
    let renewed = f.ca.node("node-1", &["127.0.0.1".into()], valid()).unwrap();
    write(f.dir.path(), "node-1", &renewed);
    let leaf = r.reload().unwrap();
    assert_eq!(leaf.spki_sha256, renewed.info.spki_sha256);
    assert_ne!(leaf.spki_sha256, first_leaf.spki_sha256);
    assert_eq!(r.generation(), 1);
    assert!(!std::sync::Arc::ptr_eq(&first, &r.current()));
    let second = r.current();

    // A broken certificate file: refused, the current config stays.
    std::fs::write(c, "garbage").unwrap();
    let e = r.reload().unwrap_err();
    assert!(matches!(e, TlsError::NotPem { .. }), "{e:?}");
    assert!(std::sync::Arc::ptr_eq(&second, &r.current()));
    assert_eq!(r.generation(), 1);
    assert_eq!(reload_all(std::slice::from_ref(&r)), 1);

    // A certificate written before its key (a half-finished renewal): refused until both are.
    let next = f.ca.node("node-1", &["127.0.0.1".into()], valid()).unwrap();
    std::fs::write(c, &next.cert_pem).unwrap();
    let e = r.reload().unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert!(std::sync::Arc::ptr_eq(&second, &r.current()));
    // A broken CA bundle is refused too.
    std::fs::write(k, next.key_pem.as_bytes()).unwrap();
    let ca_text = std::fs::read_to_string(&f.ca_pem).unwrap();
    std::fs::write(&f.ca_pem, "").unwrap();
    assert!(matches!(r.reload().unwrap_err(), TlsError::NotPem { .. }));
    std::fs::write(&f.ca_pem, ca_text).unwrap();
    assert_eq!(reload_all(std::slice::from_ref(&r)), 0);
    assert_eq!(r.leaf().spki_sha256, next.info.spki_sha256);
    assert_eq!(r.generation(), 2);
}
