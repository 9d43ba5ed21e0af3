//! Property test: a directory reloaded incrementally (parsed files kept,
//! namespace-local checks and translation kept, xDS entries taken over
//! from the previous set) gives exactly what loading it from scratch
//! gives — the same problems, or the same snapshot, warnings and xDS
//! resources — over a few hundred random edits of a generated mesh and
//! of the demo's configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use weft_config::{LoadError, Loader};
use weft_core::model::Snapshot;
use weft_xds::ResourceSet;
use weft_xds::resources::{build, build_from};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Clone, Debug)]
struct Svc {
    port: u16,
    /// Which `app` label the selector picks (`None`: inline endpoints).
    app: Option<u8>,
    dns: bool,
    use_waypoint: bool,
    address: u8,
}

#[derive(Clone, Debug)]
struct Wl {
    app: u8,
    ip: u8,
    not_ready: bool,
    sa: u8,
    client_only: bool,
}

#[derive(Clone, Debug)]
struct Ns {
    services: Vec<Svc>,
    workloads: Vec<Wl>,
    /// Workloads in their own file.
    split: bool,
}

#[derive(Clone, Debug)]
struct Mesh {
    namespaces: Vec<Ns>,
    trust_domain: u8,
    /// (namespace, selected app or namespace-wide, allowed port).
    policies: Vec<(usize, Option<u8>, u16)>,
    strict_namespace: Option<usize>,
    /// A VirtualService timeout on ns0's first service.
    timeout_ms: Option<u16>,
    waypoint_ip: u8,
}

fn generate(rng: &mut Rng) -> Mesh {
    let namespaces = (0..4)
        .map(|_| Ns {
            services: (0..3)
                .map(|i| Svc {
                    port: 80,
                    app: Some(i),
                    dns: false,
                    use_waypoint: false,
                    address: 0,
                })
                .collect(),
            workloads: (0..6)
                .map(|i| Wl {
                    app: (i % 3) as u8,
                    ip: i as u8,
                    not_ready: false,
                    sa: 0,
                    client_only: false,
                })
                .collect(),
            split: rng.chance(50),
        })
        .collect();
    Mesh {
        namespaces,
        trust_domain: 0,
        policies: vec![(1, Some(0), 80), (2, None, 80)],
        strict_namespace: None,
        timeout_ms: Some(500),
        waypoint_ip: 1,
    }
}

/// One random edit; returns the namespaces whose files change (`None`:
/// the global file).
fn edit(mesh: &mut Mesh, rng: &mut Rng) -> Vec<Option<usize>> {
    let n = rng.below(mesh.namespaces.len());
    let ns = &mut mesh.namespaces[n];
    let s = rng.below(ns.services.len().max(1));
    let w = rng.below(ns.workloads.len().max(1));
    match rng.below(16) {
        0 if !ns.services.is_empty() => ns.services[s].port = 80 + rng.below(3) as u16,
        1 if !ns.workloads.is_empty() => ns.workloads[w].app = rng.below(4) as u8,
        2 if !ns.workloads.is_empty() => {
            ns.workloads.remove(w);
        }
        3 => ns.workloads.push(Wl {
            app: rng.below(3) as u8,
            ip: 100 + rng.below(100) as u8,
            not_ready: false,
            sa: 0,
            client_only: false,
        }),
        4 if !ns.workloads.is_empty() => ns.workloads[w].not_ready ^= true,
        5 if !ns.services.is_empty() => {
            ns.services[s].app = if ns.services[s].app.is_some() {
                None
            } else {
                Some(rng.below(3) as u8)
            }
        }
        6 if !ns.services.is_empty() => ns.services[s].dns ^= true,
        7 if !ns.services.is_empty() => ns.services[s].use_waypoint ^= true,
        8 if !ns.workloads.is_empty() => ns.workloads[w].ip = rng.below(8) as u8,
        9 if !ns.workloads.is_empty() => ns.workloads[w].sa = rng.below(2) as u8,
        10 => ns.split ^= true,
        11 if !ns.workloads.is_empty() => ns.workloads[w].client_only ^= true,
        12 => {
            mesh.policies = (0..rng.below(3))
                .map(|_| {
                    let app = rng.chance(50).then(|| rng.below(3) as u8);
                    (rng.below(4), app, 80 + rng.below(2) as u16)
                })
                .collect();
            return vec![None];
        }
        13 => {
            mesh.strict_namespace = rng.chance(50).then(|| rng.below(4));
            mesh.timeout_ms = rng.chance(70).then(|| 100 * (1 + rng.below(5) as u16));
            return vec![None];
        }
        14 => {
            mesh.waypoint_ip = rng.below(3) as u8;
            return vec![None];
        }
        15 if rng.chance(20) => {
            mesh.trust_domain ^= 1;
            return vec![None];
        }
        _ if !ns.services.is_empty() => ns.services[s].address = rng.below(4) as u8,
        _ => {}
    }
    vec![Some(n)]
}

fn namespace_files(n: usize, ns: &Ns) -> BTreeMap<String, String> {
    let mut services = String::new();
    for (i, s) in ns.services.iter().enumerate() {
        let waypoint = if s.use_waypoint {
            "\n  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ns0}"
        } else {
            ""
        };
        let resolution = if s.dns { "DNS" } else { "STATIC" };
        let _ = write!(
            services,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s{i}\n  namespace: ns{n}{waypoint}\nspec:\n  hosts: [s{i}.ns{n}.svc.cluster.local]\n  addresses: [240.{n}.{i}.{}]\n  location: MESH_INTERNAL\n  resolution: {resolution}\n  ports: [{{name: http, number: {}, protocol: HTTP, targetPort: 8080}}]\n",
            s.address, s.port
        );
        match s.app {
            Some(app) => {
                let _ = writeln!(services, "  workloadSelector: {{labels: {{app: a{app}}}}}");
            }
            None => {
                let _ = writeln!(
                    services,
                    "  endpoints: [{{address: 10.9.{n}.{i}, labels: {{app: inline}}}}]"
                );
            }
        }
        services.push_str("---\n");
    }
    let mut workloads = String::new();
    for (i, w) in ns.workloads.iter().enumerate() {
        let mut annotations = Vec::new();
        if w.not_ready {
            annotations.push("weft.dev/not-ready: \"true\"");
        }
        if w.client_only {
            annotations.push("weft.dev/client-only: \"true\"");
        }
        let _ = write!(
            workloads,
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w{i}\n  namespace: ns{n}\n  annotations: {{{}}}\nspec:\n  address: 10.{n}.0.{}\n  serviceAccount: sa{}\n  locality: region/zone-{}\n  labels: {{app: a{}, weft.dev/node: node-{}}}\n---\n",
            annotations.join(", "),
            w.ip,
            w.sa,
            i % 2,
            w.app,
            i % 2
        );
    }
    let mut files = BTreeMap::new();
    if ns.split {
        files.insert(format!("ns{n}.yaml"), services);
        files.insert(format!("ns{n}-workloads.yaml"), workloads);
    } else {
        files.insert(format!("ns{n}.yaml"), services + &workloads);
    }
    files
}

fn global_file(mesh: &Mesh) -> String {
    let domain = if mesh.trust_domain == 0 {
        "cluster.local"
    } else {
        "example.org"
    };
    let mut out = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec:\n  trustDomain: {domain}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: waypoint, namespace: ns0}}\nspec:\n  address: 10.200.0.{}\n  serviceAccount: waypoint\n  labels: {{weft.dev/waypoint: \"true\", weft.dev/node: node-0}}\n---\n",
        mesh.waypoint_ip
    );
    for (i, (ns, app, port)) in mesh.policies.iter().enumerate() {
        let selector = app.map_or(String::new(), |a| {
            format!("  selector: {{matchLabels: {{app: a{a}}}}}\n")
        });
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n{selector}  action: ALLOW\n  rules:\n  - to: [{{operation: {{ports: [\"{port}\"]}}}}]\n---\n"
        );
    }
    if let Some(ns) = mesh.strict_namespace {
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: ns{ns}}}\nspec:\n  mtls: {{mode: STRICT}}\n---\n"
        );
    }
    if let Some(ms) = mesh.timeout_ms {
        let _ = write!(
            out,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns0}}\nspec:\n  hosts: [s0.ns0.svc.cluster.local]\n  http:\n  - timeout: {ms}ms\n    route: [{{destination: {{host: s0.ns0.svc.cluster.local}}}}]\n"
        );
    }
    out
}

fn write_files(dir: &Path, files: &BTreeMap<String, String>) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

fn render_all(dir: &Path, mesh: &Mesh) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for (n, ns) in mesh.namespaces.iter().enumerate() {
        files.extend(namespace_files(n, ns));
    }
    files.insert("global.yaml".into(), global_file(mesh));
    // Remove files no longer produced (a namespace merged its files).
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !files.contains_key(&name) {
            std::fs::remove_file(entry.path()).expect("remove");
        }
    }
    files
}

/// Every resource of every type: name → (version, body).
fn contents(set: &ResourceSet) -> BTreeMap<(&'static str, String), (u64, Vec<u8>)> {
    set.types
        .iter()
        .flat_map(|(t, resources)| {
            resources.iter().map(move |(name, entry)| {
                (
                    (*t, name.to_string()),
                    (entry.version, entry.body.value.clone()),
                )
            })
        })
        .collect()
}

/// Loads `dir` both ways and checks they agree; returns the incremental
/// result for the next round.
fn compare(
    dir: &Path,
    loader: &mut Loader,
    previous: &mut Option<(Arc<Snapshot>, ResourceSet)>,
    version: u64,
    what: &str,
) -> bool {
    let incremental = loader.load(dir);
    let full = weft_config::load_path(dir);
    match (incremental, full) {
        (Ok(inc), Ok(full)) => {
            assert_eq!(inc.snapshot, full.snapshot, "{what}: snapshots differ");
            let warnings = |c: &weft_config::Config| -> Vec<String> {
                c.warnings.iter().map(ToString::to_string).collect()
            };
            assert_eq!(warnings(&inc), warnings(&full), "{what}: warnings differ");
            let from_scratch = build(&full.snapshot, version);
            let updated = build_from(
                &inc.snapshot,
                version,
                previous.as_ref().map(|(s, set)| (&**s, set)),
            );
            assert_eq!(
                contents(&updated),
                contents(&from_scratch),
                "{what}: xDS resources differ"
            );
            *previous = Some((inc.snapshot.clone(), updated));
            true
        }
        (Err(LoadError::Invalid(a)), Err(LoadError::Invalid(b))) => {
            let text = |p: &weft_config::Problems| -> Vec<String> {
                p.iter().map(ToString::to_string).collect()
            };

            assert_eq!(text(&a), text(&b), "{what}: problems differ");
            false
        }
        (a, b) => panic!(
            "{what}: incremental {:?} but from scratch {:?}",
            a.map(|_| "ok"),
            b.map(|_| "ok")
        ),
    }
}

#[test]
fn incremental_reloads_equal_loads_from_scratch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut mesh = generate(&mut rng);
    write_files(dir.path(), &render_all(dir.path(), &mesh));
    let mut loader = Loader::default();
    let mut previous = None;
    assert!(
        compare(dir.path(), &mut loader, &mut previous, 1, "initial"),
        "the generated mesh is valid"
    );
    let (mut valid, mut invalid) = (0, 0);
    let mut last_valid = mesh.clone();
    let mut last_was_invalid = false;
    for round in 0..400 {
        let before = render_all(dir.path(), &mesh);
        // Most edits build on a valid mesh; some pile up on an invalid one.
        let touched = if last_was_invalid && rng.chance(70) {
            mesh = last_valid.clone();
            vec![]
        } else {
            edit(&mut mesh, &mut rng)
        };
        let after = render_all(dir.path(), &mesh);
        // Write only files whose text changed, so the others are reused.
        let changed: BTreeMap<String, String> = after
            .into_iter()
            .filter(|(name, text)| before.get(name) != Some(text))
            .collect();
        write_files(dir.path(), &changed);
        let what = format!("round {round} ({touched:?})");
        last_was_invalid = !compare(dir.path(), &mut loader, &mut previous, round + 2, &what);
        if !last_was_invalid {
            valid += 1;
            last_valid = mesh.clone();
        } else {
            invalid += 1;
        }
    }
    // Both outcomes were exercised.
    assert!(
        valid > 30 && invalid > 10,
        "{valid} valid, {invalid} invalid"
    );
}

/// The demo's own configuration, edited line by line: each round changes
/// one number in one file (or puts it back), whatever that does.
#[test]
fn incremental_reloads_of_the_demo_equal_loads_from_scratch() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&demo).expect("demo").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            files.insert(name, std::fs::read_to_string(entry.path()).expect("read"));
        }
    }
    write_files(dir.path(), &files);
    let mut loader = Loader::default();
    let mut previous = None;
    assert!(compare(dir.path(), &mut loader, &mut previous, 1, "demo"));
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let names: Vec<String> = files.keys().cloned().collect();
    for round in 0..150 {
        let name = &names[rng.below(names.len())];
        let original = &files[name];
        let digits: Vec<usize> = original
            .char_indices()
            .filter(|(_, c)| c.is_ascii_digit())
            .map(|(i, _)| i)
            .collect();
        let at = digits[rng.below(digits.len())];
        let mut text = original.clone();
        let new_digit = char::from(b'0' + rng.below(10) as u8);
        text.replace_range(at..=at, &new_digit.to_string());
        std::fs::write(dir.path().join(name), &text).expect("write");
        let what = format!("round {round}: {name} byte {at} → {new_digit}");
        compare(dir.path(), &mut loader, &mut previous, round + 2, &what);
        if rng.chance(50) {
            std::fs::write(dir.path().join(name), original).expect("write");
            compare(
                dir.path(),
                &mut loader,
                &mut previous,
                round + 2,
                "restored",
            );
        }
    }
}
