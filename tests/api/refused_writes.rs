//! A database that stops taking writes while it still answers reads: the embedded host's disk
//! full (its data folder on a small tmpfs, filled up), and a MariaDB server switched to
//! `read_only` under the embedded queue (a server of the test's own, so that no other test's
//! writes are refused). In both: an admission is answered `503 unavailable` within a few
//! seconds, never `500`; readiness says the host cannot give a `202` now; a shopper's status
//! read meanwhile agrees with what becomes of the request (`queued` and later issued, or not
//! admitted and never issued); once writes are taken again every `202` is issued, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use firstcome_admission::Admission;
use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_store::Store;

use crate::helpers::{Backends, TestApp, free_port, spawn_app_on, spec, wait_for};

/// A small tmpfs mounted over a folder, unmounted when dropped (also when the test fails).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, megabytes: u32) -> Self {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a {megabytes} MiB tmpfs to fill it up, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // Whatever still fits, byte by byte in small pieces.
        while file.write_all(&chunk[..512]).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// `stalls::admit`, timed.
async fn admit(app: &TestApp, id: &str, user: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = crate::stalls::admit(app, id, user).await;
    (status, started.elapsed())
}

async fn ready(app: &TestApp) -> (u16, Value) {
    app.get("/health/ready").await
}

/// The shared part: writes are refused from `refuse()` on and taken again from `allow()` on.
async fn writes_refused<R, A, RF, AF>(app: &TestApp, refuse: R, allow: A)
where
    R: FnOnce() -> RF,
    RF: std::future::Future<Output = ()>,
    A: FnOnce() -> AF,
    AF: std::future::Future<Output = ()>,
{
    let id = app.campaign(spec(20)).await;
    assert_eq!(admit(app, &id, "before").await.0, 202);
    app.wait_issued(&id, 1, 30).await;

    refuse().await;
    let mut answers = Vec::new();
    for i in 0..3 {
        let user = format!("during{i}");
        let (status, took) = admit(app, &id, &user).await;
        assert!(
            status == 503 || status == 202,
            "{user} was answered {status} while writes were refused (503 or 202 expected)"
        );
        assert!(took < Duration::from_secs(8), "{user} waited {took:?}");
        let (_, read) = app
            .get(&format!("/api/v1/campaigns/{id}/requests/{user}"))
            .await;
        answers.push((
            user,
            status,
            read["status"].as_str().unwrap_or("").to_owned(),
        ));
    }
    assert!(
        answers.iter().any(|(_, status, _)| *status == 503),
        "no admission was refused while writes were: {answers:?}"
    );
    wait_for(10, || async { ready(app).await.0 == 503 })
        .await
        .expect("readiness says no 202 can be given now");
    let (_, body) = ready(app).await;
    eprintln!("readiness while writes are refused: {body}");

    allow().await;
    wait_for(30, || async { ready(app).await.0 == 200 })
        .await
        .expect("ready again once writes are taken");
    assert_eq!(admit(app, &id, "after").await.0, 202);
    // Whatever a status said while writes were refused, it told the truth.
    let store = &app.backends.store;
    wait_for(60, || async {
        app.backends
            .admission
            .counts(&id)
            .await
            .is_ok_and(|c| c.queued == 0)
    })
    .await
    .expect("the queue drains");
    let issued = crate::helpers::coupons(store, &id).await;
    let holders: std::collections::HashSet<&str> = issued.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(holders.len(), issued.len(), "a shopper holds two coupons");
    for user in ["before", "after"] {
        assert!(
            holders.contains(user),
            "{user} was answered 202 and holds no coupon"
        );
    }
    for (user, status, read) in &answers {
        let holds = holders.contains(user.as_str());
        if *status == 202 || read == "queued" {
            assert!(holds, "{user} ({status}, read {read:?}) holds no coupon");
        }
        if read == "none" || read.is_empty() {
            assert!(
                !holds,
                "{user}'s status read {read:?} but it was issued a coupon"
            );
        }
    }
    eprintln!("answers while writes were refused: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_answers_503_and_makes_the_embedded_host_unready() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let disk = SmallDisk::mount(dir.path(), 24);
    let backends = Backends::open(crate::helpers::Backend::Embedded, dir.path()).await;
    let app = spawn_app_on(backends, dir.clone(), |_| {}).await;
    let filler = std::sync::Mutex::new(None);
    writes_refused(
        &app,
        || async {
            *filler.lock().unwrap() = Some(disk.fill());
        },
        || async {
            let path = filler.lock().unwrap().take().unwrap();
            std::fs::remove_file(path).unwrap();
        },
    )
    .await;
    app.stop().await;
}

/// A MariaDB server of the test's own, on a free port, with a user without SUPER (which
/// `read_only` does not stop).
struct OwnMariaDb {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnMariaDb {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = std::process::Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--user=root",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db runs (Debian's mariadb-server package)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = std::process::Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .spawn()
            .expect("mariadbd runs");
        let server = Self {
            port,
            child,
            _dir: dir,
        };
        let root = server.root_url();
        wait_for(60, || async { Store::connect(&root).await.is_ok() })
            .await
            .expect("the test's own MariaDB answers");
        server
            .run(&[
                "CREATE DATABASE fc",
                "CREATE USER 'fc'@'127.0.0.1' IDENTIFIED BY 'fc-secret'",
                "GRANT ALL PRIVILEGES ON fc.* TO 'fc'@'127.0.0.1'",
            ])
            .await;
        server
    }

    fn root_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/mysql", self.port)
    }

    fn url(&self) -> String {
        format!("mysql://fc:fc-secret@127.0.0.1:{}/fc", self.port)
    }

    async fn run(&self, statements: &[&str]) {
        let root = Store::connect(&self.root_url()).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(root.pool()).await.unwrap();
        }
        root.close().await;
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_mariadb_answers_503_and_makes_the_host_unready() {
    let server = OwnMariaDb::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let database_url = server.url();
    let store = Store::open(&database_url).await.expect("migrations apply");
    let embedded = Arc::new(EmbeddedAdmission::new(store.clone()));
    let backends = Backends {
        database_url,
        redis_url: None,
        store,
        admission: embedded.clone() as Arc<dyn Admission>,
        embedded: Some(embedded),
    };
    let app = spawn_app_on(backends, dir.clone(), |_| {}).await;
    writes_refused(
        &app,
        || server.run(&["SET GLOBAL read_only = 1"]),
        || server.run(&["SET GLOBAL read_only = 0"]),
    )
    .await;
    app.stop().await;
}
