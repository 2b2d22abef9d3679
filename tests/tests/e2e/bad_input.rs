//! Bad input gets a clear error and loses nothing: unreachable database, failing
//! query, unknown placeholder, secret-like placeholder; other tables still load.

use crate::common::*;
use pgp::plan::LoadType;
use pgp::run::Outcome;

const SETUP: &str =
    "CREATE TABLE good (id int PRIMARY KEY, v text); INSERT INTO good VALUES (1, 'x');";

const TABLES: &str = "  good:
    import_db: TEST_DB
    export_schema: 's'
    export_table: 'good'
    export_table_primary_key: id
    import_query: SELECT id, v FROM good
  broken:
    import_db: TEST_DB
    export_schema: 's'
    export_table: 'broken'
    export_table_primary_key: id
    import_query: SELECT id, v FROM no_such_table
  unknown_var:
    import_db: TEST_DB
    export_schema: 's'
    export_table: 'unknown_var'
    export_table_primary_key: id
    import_query: SELECT id, v FROM good WHERE id IN {NOT_SET_ANYWHERE}
  secret_var:
    import_db: TEST_DB
    export_schema: 's'
    export_table: 'secret_var'
    export_table_primary_key: id
    import_query: SELECT id, v FROM good WHERE v <> '{TEST_DB_PASS}'
";

#[tokio::test]
async fn a_failing_table_does_not_stop_the_others_and_says_why() {
    let w = World::new("bad", SETUP, TABLES).await;
    let r = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r, "good"), &Outcome::Swapped, "{r:#?}");
    let msg = |t: &str| match outcome(&r, t) {
        Outcome::Failed(m) => m.clone(),
        o => panic!("{t}: {o:?}"),
    };
    let broken = msg("broken");
    assert!(
        broken.contains("no_such_table") && broken.contains("broken"),
        "{broken}"
    );
    let unknown = msg("unknown_var");
    assert!(
        unknown.contains("{NOT_SET_ANYWHERE}") && unknown.contains("not set"),
        "{unknown}"
    );
    let secret = msg("secret_var");
    assert!(
        secret.contains("{TEST_DB_PASS}") && secret.contains("refused"),
        "{secret}"
    );
    assert_eq!(r.failures(), 3);
    let all = format!("{r:?}");
    assert!(
        !all.contains(pgp_e2e::PASSWORD),
        "the password leaked: {all}"
    );
    assert!(!w.duck_has_table("s", "broken"));
}

#[tokio::test]
async fn an_unreachable_database_fails_every_table_without_leaking_the_password() {
    let mut w = World::new("unreach", SETUP, TABLES).await;
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    w.vars.push(("TEST_DB_PORT".into(), port.to_string()));
    let r = w.run_type(LoadType::Scd).await;
    assert_eq!(r.failures(), 4, "{r:#?}");
    match outcome(&r, "good") {
        Outcome::Failed(m) => {
            assert!(
                m.contains(&format!("postgres://postgres@127.0.0.1:{port}")),
                "{m}"
            );
            assert!(m.to_lowercase().contains("connect"), "{m}");
            assert!(!m.contains(pgp_e2e::PASSWORD));
        }
        o => panic!("{o:?}"),
    }
}
