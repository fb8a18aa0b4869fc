//! What central runs with: addresses, the shared token, limits, and the optional OTLP push and
//! state directory. The binary builds it from the command line; tests build it directly.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::error::{Error, Result};

/// Default `--telemetry-listen`.
pub const DEFAULT_TELEMETRY_LISTEN: &str = "0.0.0.0:50051";
/// Default `--http-listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_RECENT_EVENTS: usize = 256;
pub const DEFAULT_MAX_AGENTS: usize = 10_000;
pub const DEFAULT_OTLP_INTERVAL_SECONDS: u64 = 10;
/// A peer must send its preamble and `Hello` within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame, once its first byte has arrived, must be complete within this time.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the state file is rewritten (and once more at shutdown).
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(5);
/// Default `--http-max-connections`.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 64;
/// Default `--http-timeout`, seconds.
pub const DEFAULT_HTTP_TIMEOUT_SECONDS: u64 = 10;
/// Default `--agent-expiry`, seconds (a week).
pub const DEFAULT_AGENT_EXPIRY_SECONDS: u64 = 7 * 24 * 3600;
/// Default `--max-handshakes`.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// File descriptors kept for everything but connections: the runtime, the journal, the state
/// file, the OTLP exporter's sockets, logging.
pub const FD_RESERVE: usize = 64;

#[derive(Debug, Clone)]
pub struct Config {
    pub telemetry_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub token: Token,
    pub otlp: Option<OtlpConfig>,
    /// Where `state.json` is kept; `None` keeps state in memory only.
    pub state_dir: Option<PathBuf>,
    pub max_connections: usize,
    /// Recent events kept per agent.
    pub recent_events: usize,
    pub max_agents: usize,
    pub hello_timeout: Duration,
    pub frame_timeout: Duration,
    pub persist_interval: Duration,
    /// Threads answering HTTP requests.
    pub http_threads: usize,
    /// HTTP connections at once (the front refuses more with 503).
    pub http_max_connections: usize,
    /// A request head must arrive within this time.
    pub http_timeout: Duration,
    /// Telemetry connections not yet authenticated, at once.
    pub max_handshakes: usize,
    /// An agent without a connection for this long is removed.
    pub agent_expiry: Duration,
}

impl Config {
    /// A configuration with every default but the token (tests, and the base of the CLI's).
    #[must_use]
    pub fn new(token: Token) -> Self {
        Self {
            telemetry_listen: SocketAddr::from(([0, 0, 0, 0], xdt_wire::DEFAULT_PORT)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token,
            otlp: None,
            state_dir: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            recent_events: DEFAULT_RECENT_EVENTS,
            max_agents: DEFAULT_MAX_AGENTS,
            hello_timeout: HELLO_TIMEOUT,
            frame_timeout: FRAME_TIMEOUT,
            persist_interval: PERSIST_INTERVAL,
            http_threads: 4,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            http_timeout: Duration::from_secs(DEFAULT_HTTP_TIMEOUT_SECONDS),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            agent_expiry: Duration::from_secs(DEFAULT_AGENT_EXPIRY_SECONDS),
        }
    }

    /// File descriptors central may hold at once with these limits: one per telemetry
    /// connection (admitted or authenticating), four per HTTP connection (see
    /// `http::FDS_PER_CONNECTION`), and [`FD_RESERVE`].
    #[must_use]
    pub fn descriptors_needed(&self) -> usize {
        self.max_connections + self.max_handshakes + self.descriptors_besides_telemetry()
    }

    fn descriptors_besides_telemetry(&self) -> usize {
        self.http_max_connections * crate::http::FDS_PER_CONNECTION
            + crate::http::MAX_REFUSING
            + FD_RESERVE
    }

    /// Makes the limits fit `RLIMIT_NOFILE`: raises the soft limit up to the hard one if
    /// needed, and if that is not enough lowers `max_handshakes` and `max_connections` to
    /// what fits (returning their old values). Refuses when not even a few connections fit.
    pub fn fit_descriptors(&mut self) -> Result<Option<(usize, usize)>> {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let needed = self.descriptors_needed() as u64;
        let (mut soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::Config {
            option: "RLIMIT_NOFILE",
            reason: format!("cannot read it: {e}"),
        })?;
        if soft < needed && setrlimit(Resource::RLIMIT_NOFILE, needed.min(hard), hard).is_ok() {
            soft = needed.min(hard);
        }
        self.fit_within(usize::try_from(soft).unwrap_or(usize::MAX))
    }

    /// [`Config::fit_descriptors`] for a given limit: the handshakes get at most a quarter of
    /// what is left for telemetry, the sessions the rest.
    pub fn fit_within(&mut self, limit: usize) -> Result<Option<(usize, usize)>> {
        if self.descriptors_needed() <= limit {
            return Ok(None);
        }
        let besides = self.descriptors_besides_telemetry();
        let telemetry = limit.saturating_sub(besides);
        if telemetry < 32 {
            return Err(Error::Config {
                option: "--max-connections",
                reason: format!(
                    "RLIMIT_NOFILE is {limit}, below the {} descriptors of the HTTP side and \
                     the reserve plus 32 telemetry connections; raise LimitNOFILE= (or \
                     ulimit -n)",
                    besides + 32
                ),
            });
        }
        let old = (self.max_connections, self.max_handshakes);
        self.max_handshakes = self.max_handshakes.min((telemetry / 4).max(16));
        self.max_connections = self.max_connections.min(telemetry - self.max_handshakes);
        Ok(Some(old))
    }

    /// What differs in `new` that a running server cannot take over (everything is set up once
    /// at start), by option name.
    #[must_use]
    pub fn changed_needing_restart(&self, new: &Self) -> Vec<&'static str> {
        [
            (
                self.telemetry_listen != new.telemetry_listen,
                "--telemetry-listen",
            ),
            (self.http_listen != new.http_listen, "--http-listen"),
            (self.token != new.token, "the token"),
            (self.otlp != new.otlp, "--otlp-endpoint/--otlp-interval"),
            (self.state_dir != new.state_dir, "--state-dir"),
            (
                self.max_connections != new.max_connections,
                "--max-connections",
            ),
            (self.recent_events != new.recent_events, "--recent-events"),
            (self.max_agents != new.max_agents, "--max-agents"),
            (
                self.http_max_connections != new.http_max_connections,
                "--http-max-connections",
            ),
            (self.http_timeout != new.http_timeout, "--http-timeout"),
            (
                self.max_handshakes != new.max_handshakes,
                "--max-handshakes",
            ),
            (self.agent_expiry != new.agent_expiry, "--agent-expiry"),
        ]
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect()
    }

    /// Refuses limits that cannot work, naming the option.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("--max-connections", self.max_connections),
            ("--recent-events", self.recent_events),
            ("--max-agents", self.max_agents),
            ("HTTP threads", self.http_threads),
            ("--http-max-connections", self.http_max_connections),
            ("--max-handshakes", self.max_handshakes),
        ];
        for (option, value) in positive {
            if value == 0 {
                return Err(Error::Config {
                    option,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.recent_events > crate::state::MAX_RECENT_EVENTS {
            return Err(Error::Config {
                option: "--recent-events",
                reason: format!(
                    "{} is above the maximum of {}",
                    self.recent_events,
                    crate::state::MAX_RECENT_EVENTS
                ),
            });
        }
        if let Some(otlp) = &self.otlp
            && otlp.interval.is_zero()
        {
            return Err(Error::Config {
                option: "--otlp-interval",
                reason: "must be at least 1 second".into(),
            });
        }
        Ok(())
    }
}

/// Where and how often to push OTLP metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL of the collector's metrics path (`http://host:4318/v1/metrics`).
    pub endpoint: String,
    pub interval: Duration,
    /// With `--otlp-logs`: the collector's logs path (`http://host:4318/v1/logs`), where
    /// sampled and steered events go as log records.
    pub logs_endpoint: Option<String>,
}

impl OtlpConfig {
    /// Accepts `http://host:port` (the collector's base, as `OTEL_EXPORTER_OTLP_ENDPOINT`) or
    /// the full metrics URL; `/v1/metrics` is appended to a base.
    pub fn new(endpoint: &str, interval: Duration) -> Result<Self> {
        let invalid = |reason: String| Error::Config {
            option: "--otlp-endpoint",
            reason,
        };
        let Some(rest) = endpoint.strip_prefix("http://") else {
            if endpoint.starts_with("https://") {
                return Err(invalid(format!(
                    "{endpoint:?}: https is not supported (central is built without TLS); \
                     push to a local collector over http"
                )));
            }
            return Err(invalid(format!(
                "{endpoint:?} is not an http:// URL (e.g. http://127.0.0.1:4318)"
            )));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(invalid(format!("{endpoint:?} has no host")));
        }
        let path = path.trim_end_matches('/');
        let base = path.strip_suffix("/v1/metrics").unwrap_or(path);
        Ok(Self {
            endpoint: format!("http://{authority}{base}/v1/metrics"),
            interval,
            logs_endpoint: None,
        })
    }

    /// Also push sampled and steered events as OTLP logs, next to the metrics.
    #[must_use]
    pub fn with_logs(mut self) -> Self {
        let base = self
            .endpoint
            .strip_suffix("/v1/metrics")
            .unwrap_or(&self.endpoint);
        self.logs_endpoint = Some(format!("{base}/v1/logs"));
        self
    }
}

/// The shared agent token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The file's content with surrounding whitespace trimmed; an empty token is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = xdt_systemd::input::read_text(path, xdt_systemd::input::MAX_TOKEN_BYTES)
            .map_err(|source| Error::TokenFile {
                path: path.to_owned(),
                source,
            })?;
        Self::new(text.trim()).ok_or_else(|| Error::EmptyToken {
            path: path.to_owned(),
        })
    }

    /// `None` for an empty token.
    #[must_use]
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self(token.to_owned()))
    }

    /// Compares in time that depends on the lengths only, never on where the bytes differ.
    #[must_use]
    pub fn matches(&self, offered: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), offered.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Every byte of the longer input is visited and differences are OR-ed, so the time taken
/// does not reveal the length of a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let token = Token::new("s3cret").expect("token");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cres"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches(""));
        assert!(Token::new("").is_none());
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("xdt-central-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "  abc\n").expect("write");
        assert!(Token::from_file(&path).expect("token").matches("abc"));
        std::fs::write(&path, " \n\t").expect("write");
        let err = Token::from_file(&path).expect_err("empty");
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = Token::from_file(&dir.join("missing")).expect_err("missing");
        assert!(
            err.to_string().contains("cannot read the token file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn otlp_endpoints() {
        let d = Duration::from_secs(1);
        let e = |s: &str| OtlpConfig::new(s, d).map(|c| c.endpoint);
        assert_eq!(
            e("http://127.0.0.1:4318").expect("ok"),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(e("http://c:4318/").expect("ok"), "http://c:4318/v1/metrics");
        assert_eq!(
            e("http://c:4318/v1/metrics").expect("ok"),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(e("http://c/otlp").expect("ok"), "http://c/otlp/v1/metrics");
        assert!(e("https://c:4318").is_err());
        assert!(e("c:4318").is_err());
        assert!(e("http:///v1/metrics").is_err());
        let logs = |s: &str| OtlpConfig::new(s, d).expect("ok").with_logs().logs_endpoint;
        assert_eq!(
            logs("http://c:4318").as_deref(),
            Some("http://c:4318/v1/logs")
        );
        assert_eq!(
            logs("http://c/otlp/v1/metrics").as_deref(),
            Some("http://c/otlp/v1/logs")
        );
        assert_eq!(
            OtlpConfig::new("http://c", d).expect("ok").logs_endpoint,
            None
        );
    }

    #[test]
    fn limits_fit_the_descriptors() {
        let mut config = Config::new(Token::new("t").expect("token"));
        assert_eq!(config.fit_within(1 << 20).expect("fits"), None);
        let (connections, handshakes) = (config.max_connections, config.max_handshakes);
        assert_eq!(
            config.fit_within(1024).expect("clamped"),
            Some((connections, handshakes))
        );
        assert!(
            config.descriptors_needed() <= 1024,
            "{}",
            config.descriptors_needed()
        );
        assert!(
            config.max_connections >= 500 && config.max_handshakes >= 100,
            "{config:?}"
        );
        let err = config.fit_within(100).expect_err("too few");
        assert!(err.to_string().contains("LimitNOFILE"), "{err}");
    }

    #[test]
    fn limits_are_validated() {
        let token = Token::new("t").expect("token");
        assert!(Config::new(token.clone()).validate().is_ok());
        let mut config = Config::new(token);
        config.max_agents = 0;
        let err = config.validate().expect_err("zero");
        assert!(err.to_string().contains("--max-agents"), "{err}");
    }
}
