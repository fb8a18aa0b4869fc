//! A client namespace and a node namespace joined by one veth pair: the topology of `xdt demo`,
//! of the root tests and of the benchmarks. The probe goes on the node's end; traffic comes from
//! the client.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use crate::{Error, Netns, Processes, Result, netns::unique_name, veth};

/// One end of the lab's veth pair.
#[derive(Clone, Debug)]
pub struct Side {
    /// The namespace's name.
    pub ns: String,
    /// The interface's name inside it.
    pub iface: String,
    /// An IPv4 address with prefix length (`10.0.0.1/24`). Without one, ARP is off on the end,
    /// so only the frames a test sends cross the link.
    pub v4: Option<String>,
    /// An IPv6 address with prefix length. Without one, IPv6 is off on the end (no router or
    /// neighbour solicitations reach the probe).
    pub v6: Option<String>,
}

impl Side {
    /// A side with names unique to this process: namespace `PREFIX…`, interface `IF_PREFIX…`
    /// (at most five bytes each, so the interface name fits).
    #[must_use]
    pub fn unique(ns_prefix: &str, if_prefix: &str) -> Self {
        Self {
            ns: unique_name(ns_prefix),
            iface: unique_name(if_prefix),
            v4: None,
            v6: None,
        }
    }

    /// Gives this end in `ns` its addresses (or makes it quiet) and sets it up.
    pub fn configure(&self, ns: &Netns) -> Result<()> {
        let dev = self.iface.as_str();
        match &self.v4 {
            Some(cidr) => ns.ip(&["addr", "add", cidr, "dev", dev]).map(drop)?,
            None => ns.ip(&["link", "set", dev, "arp", "off"]).map(drop)?,
        }
        match &self.v6 {
            Some(cidr) => ns
                .ip(&["addr", "add", cidr, "dev", dev, "nodad"])
                .map(drop)?,
            None => ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1")?,
        }
        ns.ip(&["link", "set", dev, "up"]).map(drop)
    }

    #[must_use]
    pub fn v4(mut self, cidr: &str) -> Self {
        self.v4 = Some(cidr.to_owned());
        self
    }

    #[must_use]
    pub fn v6(mut self, cidr: &str) -> Self {
        self.v6 = Some(cidr.to_owned());
        self
    }
}

#[derive(Clone, Debug)]
pub struct LabSpec {
    pub client: Side,
    pub node: Side,
    /// TX and RX queues on each end of the veth pair (steering binds a socket per RX queue).
    pub queues: u32,
    /// The lab's directory (logs, rules, token) is a fresh `PREFIX…` in the temporary directory.
    pub dir_prefix: String,
    /// How long each process may take to exit after SIGTERM before SIGKILL (zero: SIGKILL).
    pub grace: Duration,
    /// Print each teardown step (for `xdt demo`, whose user sees what is removed).
    pub report: bool,
}

/// What a clean-up reports: done (a line for the user), or why it failed.
pub type CleanupResult = std::result::Result<String, Box<dyn std::error::Error + Send + Sync>>;
type Cleanup = Box<dyn FnOnce(&Lab) -> CleanupResult + Send + Sync>;

/// The built lab. Dropping it stops the processes, runs the clean-ups registered with
/// [`Lab::on_drop`] (newest first), removes the directory, then the namespaces.
pub struct Lab {
    pub client_if: String,
    pub node_if: String,
    pub dir: PathBuf,
    pub processes: Processes,
    cleanups: Vec<Cleanup>,
    report: bool,
    // Dropped after everything above, node first: deleting a namespace deletes its interfaces.
    pub node: Netns,
    pub client: Netns,
}

impl Lab {
    pub fn new(spec: &LabSpec) -> Result<Self> {
        let client = Netns::new(&spec.client.ns)?;
        let node = Netns::new(&spec.node.ns)?;
        veth(
            (Some(&client), &spec.client.iface),
            (Some(&node), &spec.node.iface),
            spec.queues,
        )?;
        spec.client.configure(&client)?;
        spec.node.configure(&node)?;
        let dir = std::env::temp_dir().join(unique_name(&spec.dir_prefix));
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            client_if: spec.client.iface.clone(),
            node_if: spec.node.iface.clone(),
            processes: Processes::new(dir.clone(), spec.grace),
            dir,
            cleanups: Vec::new(),
            report: spec.report,
            node,
            client,
        })
    }

    /// Writes `NAME` in the lab's directory, readable by its owner only (rules, tokens), and
    /// returns its path.
    pub fn file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        let io = |source| Error::Io {
            what: "write",
            path: path.clone(),
            source,
        };
        fs::write(&path, contents).map_err(io)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(path)
    }

    /// Runs `cleanup` when the lab is dropped, after its processes have stopped and before the
    /// namespaces go: detaching a probe, for one. Its line is printed when the lab reports.
    pub fn on_drop(
        &mut self,
        cleanup: impl FnOnce(&Self) -> CleanupResult + Send + Sync + 'static,
    ) {
        self.cleanups.push(Box::new(cleanup));
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("client", &self.client)
            .field("node", &self.node)
            .field("client_if", &self.client_if)
            .field("node_if", &self.node_if)
            .field("dir", &self.dir)
            .field("cleanups", &self.cleanups.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let report = self.report;
        self.processes.stop_all(|name| {
            if report {
                println!("stopped {name}");
            }
        });
        while let Some(cleanup) = self.cleanups.pop() {
            match cleanup(self) {
                Ok(done) if self.report => println!("{done}"),
                Ok(_) => {}
                Err(e) => eprintln!("lab clean-up: {e}"),
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        if self.report {
            for ns in [&self.node, &self.client] {
                println!("removed namespace {}", ns.name());
            }
        }
    }
}
