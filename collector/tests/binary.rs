//! The `sonde-collector` binary: configuration precedence, graceful SIGTERM, and start-up errors.

use std::time::Duration;

mod support;

use anyhow::Context;
use sonde_proto::v1::ListAgentsRequest;
use sonde_proto::v1::query_client::QueryClient;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_until_serving(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect()
            .await
        {
            return Ok(channel);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "collector at {url} never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With PostgreSQL the file's `database` is a `postgres://` URL.
async fn config_file_env_and_flags_then_graceful_sigterm(
    backend: support::Backend,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file_port = free_port()?;
    let env_port = free_port()?;
    let config = dir.path().join("collector.toml");
    let database = match backend {
        support::Backend::Sqlite => dir.path().join("file.db"),
        support::Backend::Postgres => support::database(backend, &dir).await?,
    };
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\ndatabase = \"{}\"\n[query]\ntoken = \"from-file\"\n",
            database.display()
        ),
    )?;
    // The environment overrides the file's listen address; the flag overrides its token.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--config")
        .arg(&config)
        .args(["--query-token", "from-flag"])
        .env("SONDE_LISTEN", format!("127.0.0.1:{env_port}"))
        .env_remove("SONDE_DATABASE")
        .env_remove("SONDE_QUERY_TOKEN")
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{env_port}");
    let channel = wait_until_serving(&url).await?;
    let value: tonic::metadata::MetadataValue<_> = "Bearer from-flag".parse()?;
    let mut client = QueryClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    });
    client
        .list_agents(ListAgentsRequest {})
        .await
        .context("the flag's token must be accepted")?;
    // The file's database was used: the collector created its schema there.
    let migrated = support::blocking(move || {
        support::count(&database, "SELECT COUNT(*) FROM schema_migrations", &[])
    })
    .await?;
    assert_eq!(
        migrated,
        i64::from(sonde_collector::store::migrations::latest_version())
    );

    let pid = child.id().context("child pid")?;
    // SAFETY: sending a signal to our own child process.
    let sent = unsafe { libc::kill(libc::pid_t::try_from(pid)?, libc::SIGTERM) };
    anyhow::ensure!(sent == 0, "kill failed");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(
        status.success(),
        "graceful stop must exit 0, got {status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_corrupted_database_stops_start_up_with_a_clear_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("broken.db");
    std::fs::write(
        &db,
        b"this is not sqlite at all, just text that is long enough".repeat(200),
    )?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--database")
        .arg(&db)
        .args(["--listen", &format!("127.0.0.1:{}", free_port()?)])
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a SQLite database or is corrupted") && stderr.contains("broken.db"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_config_key_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "lisen = \"127.0.0.1:1\"\n")?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonde-collector"))
        .arg("--config")
        .arg(&config)
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("lisen"),
        "{stderr}"
    );
    Ok(())
}

for_each_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    config_file_env_and_flags_then_graceful_sigterm,
}
