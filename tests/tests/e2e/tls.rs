//! TLS to the source with libpq's sslmode meanings, against the test server (which has
//! TLS on when openssl could make it a certificate).

use pgp::source::{PgSource, SourceConfig, SslMode, TlsConfig};
use pgp_e2e::{Pg, PASSWORD};

fn config(db: &str, host: &str, mode: SslMode, root: Option<std::path::PathBuf>) -> SourceConfig {
    let mut c = SourceConfig::new(host, Pg::get().port, "postgres", db, PASSWORD);
    c.tls = TlsConfig {
        mode,
        root_cert: root,
    };
    c
}

#[tokio::test]
async fn sslmodes_encrypt_and_verify_as_libpq_does() {
    let pg = Pg::get();
    let Some(ca) = pg.ca_cert.clone() else {
        println!("SKIP: the test server has no TLS (openssl missing)");
        return;
    };
    let db = pg.fresh_db("tls").await;

    for (mode, encrypted) in [
        (SslMode::Disable, false),
        (SslMode::Prefer, true),
        (SslMode::Require, true),
    ] {
        let s = PgSource::connect(&config(&db.name, "127.0.0.1", mode, None))
            .await
            .unwrap();
        assert_eq!(s.encrypted().await.unwrap(), encrypted, "{mode}");
    }

    // verify-full with the right CA, by IP and by name
    for host in ["127.0.0.1", "localhost"] {
        let s = PgSource::connect(&config(
            &db.name,
            host,
            SslMode::VerifyFull,
            Some(ca.clone()),
        ))
        .await
        .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(s.encrypted().await.unwrap());
    }

    // verify-full against the public roots: the test CA is not trusted
    let e = PgSource::connect(&config(&db.name, "127.0.0.1", SslMode::VerifyFull, None))
        .await
        .err()
        .expect("an untrusted certificate must be refused")
        .to_string();
    assert!(
        e.contains("verify-full") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    assert!(!e.contains(PASSWORD));

    // a bad sslmode is a configuration error naming the variable
    let env: std::collections::BTreeMap<String, String> = [("PGP_PG_SSLMODE", "sometimes")]
        .into_iter()
        .chain(db.env().iter().map(|(a, b)| (a.as_str(), b.as_str())))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let ci = pgp::manifest::ConnectionInfo {
        user: "TEST_DB_USER".into(),
        pass: "TEST_DB_PASS".into(),
        host: "TEST_DB_HOST".into(),
        database: "TEST_DB_NAME".into(),
        port: "TEST_DB_PORT".into(),
    };
    let e = SourceConfig::from_connection_info(&ci, &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("PGP_PG_SSLMODE"), "{e}");
}
