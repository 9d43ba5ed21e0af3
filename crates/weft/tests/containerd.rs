//! Pods as containers of a real runtime (root only): containerd 1.6 and
//! runc from Debian, started by the test with its own root, state and
//! socket under a temporary directory. `ctr run --cni` cannot pass the pod
//! metadata the CRI passes, so each pod's network namespace is created by
//! the test and set up by the CNI chain exactly as the CRI does it
//! (`CNI_ARGS` with `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`),
//! and its container is then started in it (`ctr run --with-ns
//! network:…`) on a root file system assembled from host files (the
//! binaries and the libraries `ldd` lists; no image registry is
//! reachable). The pods' objects come from the fake API server through
//! `weft control --kubernetes` to `weft node --kubernetes`.
//!
//! What must hold: an unchanged client container reaches the server
//! container's Service over HBONE, and only TLS to 15008 crosses between
//! the two pods; a container of a namespace without the label is
//! untouched (reached directly, in the clear). The runtime's containers,
//! state and the test's bridge are removed at the end.

#[path = "support/pods.rs"]
mod pods;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pods::*;

/// Why the runtime's part cannot run here, if it cannot.
fn runtime_missing() -> Option<String> {
    for tool in ["containerd", "ctr", "runc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} missing (.ci/run installs containerd and runc)"
            );
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// A containerd of the test's own: root, state and sockets in `dir`, its
/// containers in their own namespace.
struct Containerd {
    dir: PathBuf,
    namespace: String,
    daemon: Child,
    containers: Vec<String>,
    next: AtomicU32,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             # No Kubernetes CRI here: the test is the kubelet.\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let daemon = Child(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml"))
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("containerd"),
        );
        let runtime = Containerd {
            dir: dir.to_owned(),
            namespace: format!("weft-test-{}", std::process::id()),
            daemon,
            containers: Vec::new(),
            next: AtomicU32::new(0),
        };
        // Ready once it answers.
        let started = Instant::now();
        while !runtime.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        runtime
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    /// `ctr run` of `command` on `rootfs` in `pod`'s network namespace,
    /// with the `weft` binary mounted at `/weft`: in the background
    /// (`detach`), or waited for with its output.
    fn run(&mut self, pod: &Pod, rootfs: &Path, detach: bool, command: &[&str]) -> Output {
        let id = format!(
            "{}-{}",
            pod.netns.0,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let network = format!("network:{}", pod.netns.path());
        let weft = format!(
            "type=bind,src={},dst=/weft,options=rbind:ro",
            env!("CARGO_BIN_EXE_weft")
        );
        let rootfs = rootfs.display().to_string();
        let mut args = vec!["run", "--rootfs", "--with-ns", &network, "--mount", &weft];
        args.push(if detach { "--detach" } else { "--rm" });
        args.extend([rootfs.as_str(), id.as_str()]);
        args.extend(command);
        let out = self.ctr(&args);
        if detach {
            assert!(
                out.status.success(),
                "ctr run {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.containers.push(id);
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            self.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
            let started = Instant::now();
            while !self.ctr(&["task", "delete", &id]).status.success()
                && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.ctr(&["container", "delete", &id]);
        }
        self.ctr(&["namespace", "remove", &self.namespace]);
        let _ = self.daemon.0.kill();
        let _ = self.daemon.0.wait();
        // What runc's shim keeps outside the daemon's own directories.
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A root file system in `dir` holding `binaries` and the libraries `ldd`
/// lists for them (and for the `weft` binary mounted at `/weft`).
fn rootfs(dir: &Path, binaries: &[&str]) -> PathBuf {
    for sub in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(sub)).expect("rootfs dir");
    }
    std::fs::write(dir.join("weft"), b"").expect("mount point");
    let weft = env!("CARGO_BIN_EXE_weft");
    for binary in binaries.iter().copied().chain([weft]) {
        let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
        let libraries = String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let own = (binary != weft).then(|| binary.to_owned());
        for file in libraries.into_iter().chain(own) {
            let target = dir.join(file.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
            std::fs::copy(&file, &target).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
    }
    dir.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_by_containerd_join_the_mesh() {
    if let Some(reason) = skip_reason().or_else(runtime_missing) {
        println!("SKIPPED pods_run_by_containerd_join_the_mesh: {reason}");
        return;
    }
    let mut cluster = Cluster::start(3, &[]).await;
    let _node = cluster.node();
    cluster.wait_for_plugin();
    let work = cluster.chain.dir.path().to_owned();
    let mut runtime = Containerd::start(&work.join("containerd"));
    let base = rootfs(&work.join("rootfs"), &["/usr/bin/curl"]);

    // The kubelet's part: the sandbox's namespace through the CNI chain,
    // then the containers in it.
    let server = cluster.run_pod("shop", "server-1", "server");
    let client = cluster.run_pod("shop", "client-1", "client");
    let old = cluster.run_pod("legacy", "old-1", "old");
    assert!(table(&server.netns.path()).is_some(), "server-1 captured");
    assert!(table(&old.netns.path()).is_none(), "legacy/old-1 untouched");
    let serve = ["/weft", "sample-app", "--listen", "0.0.0.0:8080"];
    runtime.run(
        &server,
        &base,
        true,
        &[&serve[..], &["--name", "server"]].concat(),
    );
    runtime.run(
        &old,
        &base,
        true,
        &[&serve[..], &["--name", "old"]].concat(),
    );

    // The client container, unchanged, calls the Service by its cluster IP.
    let mut curl_in_client = |url: &str| {
        let out = runtime.run(
            &client,
            &base,
            false,
            &["/usr/bin/curl", "-s", "-i", "--max-time", "3", url],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = Instant::now();
    let answer = loop {
        let text = curl_in_client(&format!("http://{VIP}/"));
        if text.contains("x-weft-app: server") {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the client container never reached the server through the mesh: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    only_tls_between(&cluster, &client.ip, &server.ip, "container-secret", || {
        let fresh = curl_in_client(&format!("http://{VIP}/anything/container-secret"));
        assert!(fresh.contains("x-weft-app: server"), "{fresh}");
    });

    // The pod outside the mesh is reached directly, in the clear: nothing
    // in it is redirected.
    let started = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "3"])
            .arg(format!("http://{}:8080/", old.ip))
            .output()
            .expect("curl");
        if String::from_utf8_lossy(&out.stdout).contains("x-weft-app: old") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the pod outside the mesh was not reachable directly"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    drop(runtime);
    for pod in [&server, &client, &old] {
        cluster.delete_pod(pod);
    }
    assert!(
        table(&server.netns.path()).is_none(),
        "DEL removed the rules"
    );
}
