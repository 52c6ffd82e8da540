//! Hosts for partition tests: one Linux network namespace per host, joined by veth pairs
//! on a bridge the test creates (and removes on drop), with `iptables` DROP rules inside
//! the namespaces to cut links.
//!
//! Why namespaces and not loopback: a partition must drop packets between *hosts* while
//! each process keeps running and keeps its sockets, which loopback cannot do. Why DROP
//! rather than a blackhole route: a real partition is silent (packets vanish, peers find
//! out through their own timeouts), a route error would tell the sender at once.
//!
//! The test process itself stays in the root namespace and reaches every host through the
//! bridge's address (it plays the clients, which live "elsewhere"). Needs root, `ip`
//! (iproute2) and `iptables`; [`Network::create`] returns `None` (the caller skips) when
//! they are missing, except under `CI=true`, where that is a failure.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use crate::process::Process;

/// Next /24 for a network made by this test process (each test in a binary gets its own).
static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);

/// A bridge and one namespace per host.
pub struct Network {
    bridge: String,
    /// The first three octets of the network's /24.
    subnet: [u8; 3],
    hosts: Vec<Host>,
    /// Links cut now, as (host, host) index pairs with the smaller index first; `None` on
    /// one side means the test's clients (the root namespace).
    cuts: Mutex<Vec<(usize, Option<usize>)>>,
}

/// One host: a namespace with one address on the network.
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        panic!("{e}");
    }
}

impl Network {
    /// Creates the bridge and one namespace per name in `hosts` (addresses .1, .2, … in a
    /// private /24; the bridge, i.e. the test's clients, is .254). `None` when this machine
    /// cannot (not root, no `iptables`), unless `CI=true`.
    pub fn create(hosts: &[&str]) -> Option<Network> {
        if let Err(why) = Self::usable() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("partition tests need root, iproute2 and iptables in CI: {why}");
            }
            eprintln!("SKIPPED: partition tests need root, iproute2 and iptables ({why}); scripts/test.sh installs iptables");
            return None;
        }
        let pid = std::process::id();
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        // 10.<200..249>.<n>.0/24: the pid spreads concurrent test binaries apart.
        let subnet = [10, 200 + (pid % 50) as u8, n];
        let tag = format!("cc{}n{n}", pid % 100_000);
        let bridge = format!("{tag}br");
        let mut network = Network {
            bridge: bridge.clone(),
            subnet,
            hosts: Vec::new(),
            cuts: Mutex::new(Vec::new()),
        };
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        let gateway = format!("{}/24", network.ip(254));
        must("ip", &["addr", "add", &gateway, "dev", &bridge]);
        must("ip", &["link", "set", &bridge, "up"]);
        for (i, name) in hosts.iter().enumerate() {
            let netns = format!("{tag}-{name}");
            let outside = format!("{tag}v{i}");
            let inside = format!("{tag}p{i}");
            let ip = network.ip(i as u8 + 1);
            must("ip", &["netns", "add", &netns]);
            // Registered before anything else can fail, so Drop removes it.
            network.hosts.push(Host {
                name: name.to_string(),
                netns: netns.clone(),
                ip,
            });
            must(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            );
            must("ip", &["link", "set", &inside, "netns", &netns]);
            must("ip", &["link", "set", &outside, "master", &bridge]);
            must("ip", &["link", "set", &outside, "up"]);
            let addr = format!("{ip}/24");
            must("ip", &["-n", &netns, "addr", "add", &addr, "dev", &inside]);
            must("ip", &["-n", &netns, "link", "set", &inside, "up"]);
            must("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        }
        Some(network)
    }

    fn usable() -> Result<(), String> {
        // Unique per call: the tests of one binary probe at the same time.
        static NEXT_PROBE: AtomicU8 = AtomicU8::new(0);
        let probe = format!(
            "ccprobe{}-{}",
            std::process::id(),
            NEXT_PROBE.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &probe])?;
        let iptables = run(
            "ip",
            &[
                "netns",
                "exec",
                &probe,
                "iptables",
                "-A",
                "OUTPUT",
                "-d",
                "192.0.2.1/32",
                "-j",
                "DROP",
            ],
        );
        let _ = run("ip", &["netns", "del", &probe]);
        iptables
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, last)
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in this network"))
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[self.index(name)]
    }

    /// Starts `concord args…` on host `name` (plaintext across hosts: `CONCORD_INSECURE`),
    /// with the role's identity like [`crate::process::command`], and waits for its listening line.
    /// Give it `--listen <host ip>:0`.
    pub fn spawn(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let host = self.host(name);
        let inner = crate::process::command(args);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &host.netns])
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null())
            .env("CONCORD_INSECURE", "true");
        for (key, value) in inner.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        command.envs(env.iter().copied());
        Process::spawn_command(command, args)
    }

    /// Starts `program args…` (not `concord`: etcd, say) on host `name`; the handle kills
    /// it on drop. Its output is discarded.
    pub fn spawn_raw(&self, name: &str, program: &str, args: &[String]) -> RawProcess {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host(name).netns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} on {name}: {e}"));
        RawProcess(child)
    }

    /// `host:0` for `--listen`.
    pub fn listen(&self, name: &str) -> String {
        SocketAddr::from((self.host(name).ip, 0)).to_string()
    }

    /// Drops every packet between hosts `a` and `b` (both directions), silently.
    pub fn cut(&self, a: &str, b: &str) {
        self.set(self.pair(a, Some(b)), true);
    }

    /// Cuts host `a` from every other host and from the test's clients.
    pub fn isolate(&self, a: &str) {
        let me = self.index(a);
        for i in 0..self.hosts.len() {
            if i != me {
                self.set(ordered(me, Some(i)), true);
            }
        }
        self.set((me, None), true);
    }

    /// Cuts host `a` from the test's clients (the root namespace) only.
    pub fn cut_from_clients(&self, a: &str) {
        self.set((self.index(a), None), true);
    }

    /// Restores every link.
    pub fn heal(&self) {
        let cuts: Vec<_> = self.cuts.lock().expect("cuts").clone();
        for cut in cuts {
            self.set(cut, false);
        }
    }

    fn pair(&self, a: &str, b: Option<&str>) -> (usize, Option<usize>) {
        ordered(self.index(a), b.map(|b| self.index(b)))
    }

    /// Adds (`on`) or removes the DROP rules of one link in the namespaces on its ends.
    fn set(&self, (a, b): (usize, Option<usize>), on: bool) {
        let mut cuts = self.cuts.lock().expect("cuts");
        let present = cuts.contains(&(a, b));
        if present == on {
            return;
        }
        let op = if on { "-A" } else { "-D" };
        let peer_of_a = b.map_or(self.ip(254), |b| self.hosts[b].ip);
        self.rules(&self.hosts[a].netns, op, peer_of_a);
        if let Some(b) = b {
            self.rules(&self.hosts[b].netns, op, self.hosts[a].ip);
        }
        if on {
            cuts.push((a, b));
        } else {
            cuts.retain(|c| *c != (a, b));
        }
    }

    fn rules(&self, netns: &str, op: &str, peer: Ipv4Addr) {
        let peer = format!("{peer}/32");
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            must(
                "ip",
                &[
                    "netns", "exec", netns, "iptables", op, chain, dir, &peer, "-j", "DROP",
                ],
            );
        }
    }
}

/// A non-`concord` process on a host, SIGKILLed on drop.
pub struct RawProcess(std::process::Child);

impl Drop for RawProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ordered(a: usize, b: Option<usize>) -> (usize, Option<usize>) {
    match b {
        Some(b) if b < a => (b, Some(a)),
        _ => (a, b),
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Processes started with `spawn` are killed by their own handles (declare the
        // Network before them so they drop first); deleting a namespace removes its veth
        // end and with it the pair.
        for host in &self.hosts {
            let _ = run("ip", &["netns", "del", &host.netns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
