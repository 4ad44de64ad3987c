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

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `gatekeeper certs dev-cluster` prints a line per file it wrote; the reader (`true`) is gone
    // before the first one. The command must still succeed, without a panic on stderr (println!
    // would panic with "failed printing to stdout: Broken pipe").
    let bin = gatekeeper_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "{} certs dev-cluster --out {} --nodes 3 | true",
                bin.display(),
                dir.path().join("certs").display()
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The certificates were still written.
    assert!(dir.path().join("certs/ca.pem").exists());
}

#[test]
fn a_node_refuses_a_mistyped_gatekeeper_variable() {
    // The same typo in TOML is refused; so is it in the environment, naming the setting meant.
    let bin = gatekeeper_bin().unwrap();
    let out = Command::new(&bin)
        .arg("node")
        .env("GATEKEEPER_NODE_ID", "1")
        .env("GATEKEEPER_DATA_DIRR", "/tmp/nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("GATEKEEPER_DATA_DIRR (did you mean GATEKEEPER_DATA_DIR?)"),
        "{stderr}"
    );
}
