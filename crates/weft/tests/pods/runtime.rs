//! containerd 1.6 and runc from Debian, started by the test with its own
//! root, state and socket, running each pod's programs in the pod's
//! namespace on a root file system assembled from host files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Child, Pod};

/// Why the runtime's part cannot run here, if it cannot.
pub(crate) fn runtime_missing() -> Option<String> {
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
pub(crate) struct Containerd {
    dir: PathBuf,
    namespace: String,
    daemon: Child,
    containers: Vec<String>,
    next: AtomicU32,
}

impl Containerd {
    pub(crate) fn start(dir: &Path) -> Containerd {
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

    pub(crate) fn ctr(&self, args: &[&str]) -> Output {
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
    pub(crate) fn run(
        &mut self,
        pod: &Pod,
        rootfs: &Path,
        detach: bool,
        command: &[&str],
    ) -> Output {
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
pub(crate) fn rootfs(dir: &Path, binaries: &[&str]) -> PathBuf {
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
