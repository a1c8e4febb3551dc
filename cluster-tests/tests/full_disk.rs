//! A full disk, for real: the three nodes' data directories on one small tmpfs (mounted by the
//! test, so it needs root, which `make test` has). A ballast file takes the space; writes of
//! 4 KiB contexts go on until the nodes answer 507 `storage_full`; every acknowledged workflow
//! is then read back through every node; the ballast is deleted and writes are accepted again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raftflow_client::types::CreateWorkflow;
use raftflow_cluster_tests::Cluster;

/// The filesystem's size, and the free space the nodes keep (`--min-free-disk-bytes`).
const FS_MIB: u64 = 768;
const MIN_FREE_MIB: u64 = 64;

/// A tmpfs mounted on a new directory, unmounted when dropped.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(mib: u64) -> SmallFs {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "raftflow-full-disk",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (make test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a valid path, and `st` is written on success.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
        let st = unsafe { st.assume_init() };
        st.f_bavail * st.f_frsize
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills `path` with zeros until the filesystem has `leave` bytes free.
fn ballast(path: &Path, fs: &SmallFs, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while fs.free_bytes() > leave + chunk.len() as u64 {
        f.write_all(&chunk).unwrap();
        f.flush().unwrap();
    }
}

fn create(id: &str, n: usize) -> CreateWorkflow {
    CreateWorkflow {
        id: Some(id.into()),
        definition: "order".into(),
        version: None,
        context: Some(serde_json::json!({ "n": n, "note": "x".repeat(4096) })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_loses_nothing_and_recovers() {
    let fs = SmallFs::mount(FS_MIB);
    // The harness makes the nodes' data directories under TMPDIR: on the small filesystem.
    let data = fs.dir.join("cluster");
    std::fs::create_dir(&data).unwrap();
    std::env::set_var("TMPDIR", &data);
    let min_free = (MIN_FREE_MIB << 20).to_string();
    let mut c = Cluster::start(3, 2, &["--min-free-disk-bytes", &min_free]);
    std::env::remove_var("TMPDIR");
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = c.client(1);
    client
        .put_definition("order", &raftflow_cluster_tests::order_definition())
        .await
        .unwrap();

    // Leave 32 MiB above the nodes' floor: the writes below fill it.
    let ballast_file = fs.dir.join("ballast");
    let free_before = fs.free_bytes();
    ballast(&ballast_file, &fs, (MIN_FREE_MIB + 32) << 20);
    let ballast_bytes = std::fs::metadata(&ballast_file).unwrap().len();
    eprintln!(
        "full disk: {} MiB free with the cluster running, a ballast of {} MiB",
        free_before >> 20,
        ballast_bytes >> 20
    );
    // Freeing it must bring the disk well above the nodes' floor again.
    assert!(
        ballast_bytes > 2 * (MIN_FREE_MIB << 20),
        "the filesystem is too small"
    );
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    for n in 0..20_000 {
        let id = format!("wf-{n}");
        match client.create_workflow(&create(&id, n)).await {
            Ok((201, _)) => acknowledged.push(id),
            Ok((status, _)) => panic!("create {id}: {status}"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("507") || text.contains("storage_full"),
                    "create {id}: {text}"
                );
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the disk never filled"
        );
    }
    assert_eq!(refused, 20, "no 507 after {} writes", acknowledged.len());
    eprintln!(
        "full disk: {} workflows acknowledged, then 507 with {} MiB free",
        acknowledged.len(),
        fs.free_bytes() >> 20
    );
    assert!(
        acknowledged.len() > 100,
        "{} acknowledged",
        acknowledged.len()
    );

    // Nothing acknowledged is lost, through every node; no node went down.
    for id in 1..=3 {
        assert!(
            !c.has_exited(id),
            "node {id} exited:\n{}",
            c.log_tail(id, 30)
        );
        let reader = c.client(id);
        for wf in acknowledged.iter().step_by(7).chain(acknowledged.last()) {
            let got = reader.get_workflow(wf, false).await.unwrap();
            assert_eq!(&got.id, wf);
        }
    }

    // Space comes back: writes are accepted again (the nodes read their free space at most
    // every 100 ms).
    std::fs::remove_file(&ballast_file).unwrap();
    let again = Instant::now();
    let after = raftflow_cluster_tests::eventually(Duration::from_secs(10), || async {
        let (status, _) = client.create_workflow(&create("after", 0)).await?;
        anyhow::ensure!(status == 201 || status == 200, "{status}");
        Ok(())
    })
    .await;
    after.expect("writes resume once space is freed");
    eprintln!(
        "full disk: writes accepted again {} ms after the space came back",
        again.elapsed().as_millis()
    );
    for id in 1..=3 {
        c.client(id).get_workflow("after", false).await.unwrap();
    }
}
