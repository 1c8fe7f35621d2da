//! A small internet in network namespaces, for the NAT-traversal tests (issue 16).
//!
//! A [`Lab`] has one public network: a bridge `pub` in the `server` namespace, which holds
//! the server's address 203.0.113.1/24 (TEST-NET-3) and to which every public leg is
//! attached. A home ([`Lab::add_home`]) is a router namespace with its `wan` leg on the
//! public network (203.0.113.(10 + n)) and a bridge `lan` holding 10.0.n.1/24, on which
//! [`Lab::add_client`] puts client namespaces (10.0.n.(10 + m), default route via the
//! router), so that several clients can sit behind one NAT. A router knows only its two
//! connected networks, and the public network has no route back to any LAN: nothing
//! reaches a client except through its router's NAT. [`Lab::add_public_client`] puts a
//! host straight on the public network (203.0.113.(100 + n)), with no NAT.
//!
//! Each router forwards IPv4 and runs one nftables table: outbound traffic from the LAN is
//! masqueraded on `wan`; the forward chain passes the LAN's traffic out, and lets in only
//! what conntrack knows (replies) or what a `dnat` rule sent in; and, as a home router's
//! firewall does, the router drops what comes for itself from outside unasked. (Accepting
//! it would make the router keep a conntrack entry for a peer's early datagram, whose port
//! the client's own first datagram to that peer then cannot have: Linux gives it another,
//! and hole punching fails whenever the peer's datagram comes first.) The [`Nat`] kinds, in RFC
//! 4787's terms:
//!
//! - [`Nat::Cone`], a full-cone NAT: `masquerade` (port-preserving, endpoint-independent
//!   mapping) plus a `dnat` of any TCP or UDP to the router's address on a port >= 1024 to
//!   the home's first client at the same port: endpoint-independent filtering. It works for
//!   one client per home (the others are never reached from outside).
//! - [`Nat::PortRestricted`], Linux's default: `masquerade` (port-preserving,
//!   endpoint-independent mapping) and nothing in unless a conntrack entry matches: address-
//!   and port-dependent filtering.
//! - [`Nat::Symmetric`]: `masquerade random`, a new random port for each destination:
//!   address-and-port-dependent mapping (and filtering).
//! - [`Nat::Forwarded`]: Linux's default masquerade plus static port forwards of the given
//!   TCP and UDP ports to the home's first client: a reachable client.
//!
//! None of them hairpins (RFC 4787 REQ-9): two clients behind one router cannot reach each
//! other through its public address.
//!
//! Every namespace is named `confab-lab-PID-SERIAL-NAME-ROLE`, so that labs in one process
//! and in several never share one; interfaces are made straight inside their namespaces
//! and addresses live only there, so their names and the address plan can be the same in
//! every lab. Dropping the [`Lab`] (a test's panic included) deletes its namespaces and so
//! every interface and rule in them (the processes a test started there are its to end:
//! `Proc` kills its child on drop); [`Lab::new`] first deletes those a killed run left
//! (whose PID is no longer alive), ending the processes still in them.
//!
//! Needs root, iproute2 and nftables; [`Lab::new`] returns `None` (and says so) without them.

use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What every lab namespace's name begins with.
const PREFIX: &str = "confab-lab-";
/// The public network, and the server's address on it.
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// A set of namespaces wired into a public network and NATed homes; removed on drop.
pub struct Lab {
    /// `confab-lab-PID-SERIAL-NAME`, the start of every namespace name of this lab.
    prefix: String,
    server: String,
    /// Every namespace made, in order; deleted on drop.
    namespaces: Vec<String>,
    homes: Vec<Home>,
    public_clients: u8,
}

/// How a home's router translates and filters; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Full cone: endpoint-independent mapping and filtering.
    Cone,
    /// Linux's default masquerade: endpoint-independent mapping, address-and-port-dependent
    /// filtering.
    PortRestricted,
    /// A new random port per destination.
    Symmetric,
    /// [`Nat::PortRestricted`] with these ports forwarded to the home's first client.
    Forwarded { tcp: u16, udp: u16 },
}

/// A home made by [`Lab::add_home`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HomeId(usize);

/// A namespace with one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

struct Home {
    router: String,
    clients: u8,
}

impl Lab {
    /// A lab with only the server namespace; `name` (a test's, say) goes into the namespace
    /// names. `None`, after saying why, without root, `ip` or `nft`.
    pub fn new(name: &str) -> Option<Lab> {
        if let Some(missing) = missing_prerequisite() {
            eprintln!("skipping the network lab {name}: needs root and ip/nft ({missing})");
            return None;
        }
        remove_stale();
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{serial}-{name}", std::process::id());
        let server = format!("{prefix}-server");
        let mut lab = Lab {
            prefix,
            server: server.clone(),
            namespaces: Vec::new(),
            homes: Vec::new(),
            public_clients: 0,
        };
        lab.add_namespace(&server);
        lab.ip(&server, "link add pub type bridge");
        lab.ip(&server, &format!("addr add {SERVER_IP}/24 dev pub"));
        lab.ip(&server, "link set pub up");
        sysctl(&server, &["net.bridge.bridge-nf-call-iptables=0"]);
        Some(lab)
    }

    /// The server's address on the public network.
    pub fn server_ip(&self) -> Ipv4Addr {
        SERVER_IP
    }

    /// The server's namespace.
    pub fn server_ns(&self) -> &str {
        &self.server
    }

    /// A home behind a router doing `nat`, with no client yet.
    pub fn add_home(&mut self, nat: Nat) -> HomeId {
        let n = self.homes.len() + 1;
        assert!(n <= 89, "at most 89 homes in a lab");
        let router = format!("{}-router{n}", self.prefix);
        self.add_namespace(&router);
        let server = self.server.clone();
        self.ip(&server, &format!("link add r{n} type veth peer name wan netns {router}"));
        self.ip(&server, &format!("link set r{n} master pub up"));
        self.ip(&router, &format!("addr add {}/24 dev wan", public_ip(n)));
        self.ip(&router, "link set wan up");
        self.ip(&router, "link add lan type bridge");
        self.ip(&router, &format!("addr add {}/24 dev lan", lan_ip(n, 1)));
        self.ip(&router, "link set lan up");
        sysctl(&router, &["net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=0"]);
        nft(&router, &ruleset(nat, lan_ip(n, 10)));
        self.homes.push(Home { router, clients: 0 });
        HomeId(n - 1)
    }

    /// A client namespace on `home`'s LAN, routed through its router.
    pub fn add_client(&mut self, home: HomeId) -> Host {
        let n = home.0 + 1;
        let m = self.homes[home.0].clients + 1;
        assert!(m <= 200, "at most 200 clients in a home");
        self.homes[home.0].clients = m;
        let router = self.homes[home.0].router.clone();
        let ns = format!("{}-home{n}-client{m}", self.prefix);
        self.add_namespace(&ns);
        self.ip(&router, &format!("link add c{m} type veth peer name eth0 netns {ns}"));
        self.ip(&router, &format!("link set c{m} master lan up"));
        let ip = lan_ip(n, 9 + m);
        self.ip(&ns, &format!("addr add {ip}/24 dev eth0"));
        self.ip(&ns, "link set eth0 up");
        self.ip(&ns, &format!("route add default via {}", lan_ip(n, 1)));
        Host { ns, ip }
    }

    /// A host on the public network, with no NAT in front of it.
    pub fn add_public_client(&mut self) -> Host {
        let n = self.public_clients + 1;
        assert!(n <= 150, "at most 150 public clients in a lab");
        self.public_clients = n;
        let ns = format!("{}-public{n}", self.prefix);
        self.add_namespace(&ns);
        let server = self.server.clone();
        self.ip(&server, &format!("link add p{n} type veth peer name eth0 netns {ns}"));
        self.ip(&server, &format!("link set p{n} master pub up"));
        let ip = Ipv4Addr::new(203, 0, 113, 100 + n);
        self.ip(&ns, &format!("addr add {ip}/24 dev eth0"));
        self.ip(&ns, "link set eth0 up");
        Host { ns, ip }
    }

    /// `home`'s router: its namespace and its public address, the one its NAT maps to.
    pub fn router(&self, home: HomeId) -> Host {
        Host { ns: self.homes[home.0].router.clone(), ip: public_ip(home.0 + 1) }
    }

    /// `program` run in namespace `ns` (`ip netns exec NS PROGRAM`); add its arguments.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Sets the MTU of `host`'s interface, and of its port on the public network if it is
    /// a public client (so that jumbo frames cross the bridge); a host made smaller under a
    /// running test drops what is larger, without a word, as a path that shrank does.
    pub fn set_mtu(&self, host: &Host, mtu: u32) {
        let octets = host.ip.octets();
        if octets[..3] == [203, 0, 113] && octets[3] > 100 {
            let port = format!("p{}", octets[3] - 100);
            self.ip(&self.server, &format!("link set dev {port} mtu {mtu}"));
        }
        self.ip(&host.ns, &format!("link set dev eth0 mtu {mtu}"));
    }

    fn add_namespace(&mut self, ns: &str) {
        run(std::process::Command::new("ip").args(["netns", "add", ns]));
        // Recorded before anything else can fail, so that drop deletes it.
        self.namespaces.push(ns.to_owned());
        self.ip(ns, "link set lo up");
    }

    /// `ip -n NS ARGS` (split at spaces), which must succeed.
    fn ip(&self, ns: &str, args: &str) {
        run(std::process::Command::new("ip").args(["-n", ns]).args(args.split(' ')));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            delete_namespace(ns);
        }
    }
}

/// Router n's address on the public network.
fn public_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + n as u8)
}

/// Host `host` on home n's LAN.
fn lan_ip(n: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, n as u8, host)
}

/// The router's nftables table for `nat`, whose forwards go to `client`.
fn ruleset(nat: Nat, client: Ipv4Addr) -> String {
    let masquerade = match nat {
        Nat::Symmetric => "masquerade random",
        _ => "masquerade",
    };
    let inbound = match nat {
        Nat::Cone => {
            format!("iifname \"wan\" meta l4proto {{ tcp, udp }} th dport >= 1024 dnat to {client}")
        }
        Nat::Forwarded { tcp, udp } => format!(
            "iifname \"wan\" tcp dport {tcp} dnat to {client}:{tcp}\n\
             iifname \"wan\" udp dport {udp} dnat to {client}:{udp}"
        ),
        Nat::PortRestricted | Nat::Symmetric => String::new(),
    };
    format!(
        "table ip lab_nat {{
            chain prerouting {{
                type nat hook prerouting priority dstnat; policy accept;
                {inbound}
            }}
            chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                oifname \"wan\" {masquerade}
            }}
            chain forward {{
                type filter hook forward priority filter; policy drop;
                iifname \"lan\" oifname \"wan\" accept
                ct state established,related accept
                ct status dnat accept
            }}
            chain input {{
                type filter hook input priority filter; policy accept;
                iifname \"wan\" ct state new drop
            }}
        }}"
    )
}

/// Why a lab cannot be built here, if it cannot.
fn missing_prerequisite() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("not root");
    }
    let works = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works("ip", "-V") {
        return Some("no ip");
    }
    if !works("nft", "--version") {
        return Some("no nft");
    }
    None
}

/// Deletes the lab namespaces of processes that are gone (a killed test run's), and ends
/// what still runs in them.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || std::path::Path::new("/proc").join(pid).exists() {
            continue;
        }
        // What the run left running there (a server, an echo) would keep the namespace.
        let pids = std::process::Command::new("ip").args(["netns", "pids", &name]).output();
        let pids = pids.map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
        for pid in pids.unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        delete_namespace(&name);
    }
}

fn delete_namespace(ns: &str) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "delete", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sets the sysctl `settings` in `ns`, skipping keys this kernel lacks.
fn sysctl(ns: &str, settings: &[&str]) {
    run(std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qew"])
        .args(settings));
}

/// Loads the nftables `rules` in `ns`.
fn nft(ns: &str, rules: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft starts");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nft in {ns} failed: {stderr}\n{rules}");
}

/// Runs `command`, which must succeed.
fn run(command: &mut std::process::Command) {
    let out = command.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?} failed: {stderr}");
}
