//! The connection to Redis: one server (`redis://`, `rediss://`, `unix://`) through a
//! reconnecting [`ConnectionManager`], or a Redis Cluster (`redis+cluster://host:port,...`)
//! through the `redis` crate's async cluster client, which follows `MOVED`/`ASK`, refreshes its
//! slot map and reconnects after a failover.
//!
//! Every command the admission queue sends names keys of one campaign, which share a hash tag,
//! so each one goes to the campaign's slot; scripts are loaded on every primary when a node
//! answers `NOSCRIPT` (`SCRIPT LOAD` is routed to all primaries).
//!
//! The cluster client refreshes its slot map only when a node answers `MOVED`. A primary that
//! was killed answers nothing, so a client whose map still names it would try it forever, long
//! after its replica took over (seen in `tests/api/cluster.rs`). [`Cluster`] therefore opens a
//! fresh connection from the seed nodes in the background, which reads the slot map anew, when
//! a command fails because a node is unreachable or the cluster is down; the failed command is
//! not sent again here (its caller answers `503` or retries).
//!
//! The cluster client itself retries a command whose connection was reset (`retries`), so a
//! script call can run twice: the admission script then answers the second run `duplicate`
//! with the position of the first, which the host answers `409` (still a place in line).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// The URL scheme of a Redis Cluster: `redis+cluster://[user:password@]host:port,host:port`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Most seed nodes a cluster URL may list.
const MAX_SEED_NODES: usize = 64;

/// Where the admission queue lives, parsed from `FIRSTCOME_REDIS_URL`. Its `Debug` hides
/// passwords.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis server, at this URL (as the `redis` crate reads it).
    Server(String),
    /// A Redis Cluster reached through these seed nodes (`redis://[auth@]host:port` each):
    /// the client learns every other node from them.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use firstcome_core::bounded::redact_url;
        match self {
            Self::Server(url) => f.debug_tuple("Server").field(&redact_url(url)).finish(),
            Self::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Target {
    /// Reads a Redis URL. A cluster URL lists its seed nodes after the scheme, separated by
    /// commas, with one optional `user:password@` before them that applies to every node, and
    /// no database (a cluster has only database 0). As in any `redis://` URL, a password with
    /// `#`, `/`, `?` or `%` in it is written percent-encoded (`%23`, `%2F`, `%3F`, `%25`); it is
    /// passed on as written.
    ///
    /// Errors: a message that says what to fix (no node, an empty or port-less node, a
    /// database path, a query string, too many nodes).
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            if url.starts_with("rediss+cluster://") {
                return Err(
                    "rediss+cluster:// (TLS to a cluster) is not supported: this \
                            firstcome is built without TLS for Redis"
                        .into(),
                );
            }
            return Ok(Self::Server(url.to_owned()));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        if rest.contains('?') {
            return Err(format!(
                "{CLUSTER_SCHEME} takes no query string: a cluster URL is \
                 {CLUSTER_SCHEME}[user:password@]host:port,host:port"
            ));
        }
        let hosts = match rest.split_once('/') {
            Some((hosts, "" | "0")) => hosts,
            Some((_, db)) => {
                return Err(format!(
                    "a Redis Cluster has only database 0, but the URL names database {db:?}: \
                     drop the /{db}"
                ));
            }
            None => rest,
        };
        let mut nodes = Vec::new();
        for node in hosts.split(',') {
            let node = node.trim();
            let Some((host, port)) = node.rsplit_once(':') else {
                return Err(format!(
                    "cluster node {node:?} has no port: list nodes as host:port,host:port"
                ));
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!(
                    "cluster node {node:?} is not host:port with a port in 1..=65535"
                ));
            }
            nodes.push(match auth {
                Some(auth) => format!("redis://{auth}@{node}"),
                None => format!("redis://{node}"),
            });
        }
        if nodes.len() > MAX_SEED_NODES {
            return Err(format!(
                "the cluster URL lists {} nodes; list at most {MAX_SEED_NODES} (a few seed \
                 nodes are enough: the client learns the others from them)",
                nodes.len()
            ));
        }
        Ok(Self::Cluster(nodes))
    }
}

/// A connection to one Redis server or to a cluster; cheap to clone (clones share the
/// underlying connections).
#[derive(Clone)]
pub enum Connection {
    Server(ConnectionManager),
    Cluster(Arc<Cluster>),
}

/// Longest wait for a connection to Redis to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for Redis's answer to one command or pipeline, on a server or a cluster. The
/// replica acknowledgement's `WAIT` (at most `admission.redis_wait_timeout_ms`, 4 s) fits in it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two fresh cluster connections: while a failover is still under way
/// (about the node timeout), each would find the same stale map.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);

/// A cluster connection that is replaced by a fresh one when the cluster's topology changed
/// under it (see the module's documentation).
pub struct Cluster {
    client: ClusterClient,
    /// The connection in use and its generation (how many times it was replaced).
    current: RwLock<(u64, ClusterConnection)>,
    /// Held while a fresh connection is opened, with the instant of the last one.
    reconnecting: tokio::sync::Mutex<Instant>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("generation", &self.current.read().unwrap().0)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    fn current(&self) -> (u64, ClusterConnection) {
        self.current.read().unwrap().clone()
    }

    /// Replaces the connection of `generation` by a fresh one, unless another caller already
    /// did or one was opened less than [`RECONNECT_EVERY`] ago. Runs as a task of its own.
    async fn reconnect(self: Arc<Self>, generation: u64) {
        let mut last = self.reconnecting.lock().await;
        if self.current.read().unwrap().0 != generation || last.elapsed() < RECONNECT_EVERY {
            return;
        }
        *last = Instant::now();
        match self.client.get_async_connection().await {
            Ok(fresh) => {
                tracing::info!(
                    generation = generation + 1,
                    "reconnected to the Redis Cluster: its slot map is read anew"
                );
                *self.current.write().unwrap() = (generation + 1, fresh);
            }
            Err(e) => tracing::warn!(error = %e, "cannot reconnect to the Redis Cluster"),
        }
    }

    /// Sends one command; when it failed because the topology changed under the connection,
    /// starts opening a fresh one.
    async fn send(self: Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut conn) = self.current();
        let reply = conn.req_packed_command(cmd).await;
        self.after(generation, reply.as_ref().err());
        reply
    }

    async fn send_pipeline(
        self: Arc<Self>,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut conn) = self.current();
        let reply = conn.req_packed_commands(pipeline, offset, count).await;
        self.after(generation, reply.as_ref().err());
        reply
    }

    fn after(self: &Arc<Self>, generation: u64, error: Option<&redis::RedisError>) {
        if error.is_some_and(topology_changed) {
            tokio::spawn(self.clone().reconnect(generation));
        }
    }

    /// `PING` to one node: a cluster with one primary failing over still serves the campaigns
    /// of the others (and this host's sold-out answers), so readiness does not ask them all.
    async fn ping(self: Arc<Self>) -> RedisResult<()> {
        let (generation, mut conn) = self.current();
        let reply = conn
            .route_command(
                &redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await;
        self.after(generation, reply.as_ref().err());
        reply.map(drop)
    }
}

/// Whether an error says the node the client chose is gone or no longer serves the slot (a
/// timeout alone does not: a slow script or `WAIT` is no reason to reconnect).
fn topology_changed(e: &redis::RedisError) -> bool {
    (e.is_io_error() && !e.is_timeout())
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            redis::ErrorKind::ClusterDown | redis::ErrorKind::ReadOnly | redis::ErrorKind::Moved
        )
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server(_) => "Connection::Server",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl Connection {
    /// Connects to `target`. A cluster connection follows redirections and retries a failed
    /// command itself (8 times, with back-off from 50 ms to 1 s) before it gives up.
    pub async fn open(target: &Target) -> RedisResult<Self> {
        match target {
            Target::Server(url) => {
                let client = redis::Client::open(url.as_str())?;
                // Deadlines as the cluster client's: a server that stops answering without
                // closing its connections (frozen, a network partition) fails each command
                // after 5 s, so that nothing waits on it for ever.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Ok(Self::Server(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .retries(8)
                    .min_retry_wait(50)
                    .max_retry_wait(1_000)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()?;
                let conn = client.get_async_connection().await?;
                Ok(Self::Cluster(Arc::new(Cluster {
                    client,
                    current: RwLock::new((0, conn)),
                    reconnecting: tokio::sync::Mutex::new(
                        Instant::now()
                            .checked_sub(RECONNECT_EVERY)
                            .unwrap_or_else(Instant::now),
                    ),
                })))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// `PING`: the server, or one node of a cluster.
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Self::Server(conn) => redis::cmd("PING").query_async(conn).await,
            Self::Cluster(cluster) => cluster.clone().ping().await,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(conn) => conn.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(cluster.clone().send(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(cluster) => Box::pin(cluster.clone().send_pipeline(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_and_cluster_urls() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/2"),
            Ok(Target::Server("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            Target::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001"),
            Ok(Target::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7001".into()
            ]))
        );
        assert_eq!(
            Target::parse("redis+cluster://app:s3cr@t@h:7000/"),
            Ok(Target::Cluster(vec!["redis://app:s3cr@t@h:7000".into()]))
        );
        let encoded = Target::parse("redis+cluster://app:p%23ss@h:7000").unwrap();
        assert_eq!(
            encoded,
            Target::Cluster(vec!["redis://app:p%23ss@h:7000".into()])
        );
        let Target::Cluster(nodes) = encoded else {
            unreachable!()
        };
        let info = redis::IntoConnectionInfo::into_connection_info(nodes[0].as_str()).unwrap();
        assert_eq!(
            info.redis.password.as_deref(),
            Some("p#ss"),
            "decoded by the client"
        );
        assert!(
            !format!(
                "{:?}",
                Target::parse("redis+cluster://a:hunter2@h:1").unwrap()
            )
            .contains("hunter2")
        );
    }

    #[test]
    fn refuses_cluster_urls_it_cannot_honour() {
        for (url, says) in [
            ("redis+cluster://", "has no port"),
            ("redis+cluster://h", "has no port"),
            ("redis+cluster://h:0", "port in 1..=65535"),
            ("redis+cluster://h:x", "port in 1..=65535"),
            ("redis+cluster://:7000", "port in 1..=65535"),
            ("redis+cluster://h:7000,", "has no port"),
            ("redis+cluster://h:7000/3", "only database 0"),
            ("redis+cluster://h:7000?timeout=1", "no query string"),
            ("rediss+cluster://h:7000", "not supported"),
        ] {
            let err = Target::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        let many = (0..65)
            .map(|i| format!("h:{}", 7000 + i))
            .collect::<Vec<_>>();
        let err = Target::parse(&format!("redis+cluster://{}", many.join(","))).unwrap_err();
        assert!(err.contains("at most 64"), "{err}");
    }
}
