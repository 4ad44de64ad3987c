//! The real `gatekeeper` binary, run as a separate process.

use gatekeeper_integration_tests::gatekeeper_bin;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn keygen_writes_a_private_key_file_and_prints_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.key");
    let out = Command::new(gatekeeper_bin().unwrap())
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file must be private");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["public_key"], printed.as_str());
    // The seed really is the secret of the printed public key.
    let seed: [u8; 32] = hex::decode(v["seed"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let kp = keyring::Sr25519Keypair::from_seed(&seed);
    assert_eq!(hex::encode(kp.public_key().as_bytes()), printed);

    // A second keygen to the same path is refused and leaves the file alone.
    let before = std::fs::read(&path).unwrap();
    let again = Command::new(gatekeeper_bin().unwrap())
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(gatekeeper_bin().unwrap())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("keygen"));
}
