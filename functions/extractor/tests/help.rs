//! The binary's `--help` is the operator's reference: it must list every variable of
//! the fixed configuration contract.

#[test]
fn help_lists_the_configuration_variables() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extractor"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for v in ["PORT", "PGP_STORAGE_URL", "PGP_GCS_ENDPOINT"] {
        assert!(help.contains(v), "{v} missing from:\n{help}");
    }
}

#[test]
fn missing_configuration_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extractor"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("PGP_STORAGE_URL") || err.contains("storage-url"),
        "{err}"
    );
}
