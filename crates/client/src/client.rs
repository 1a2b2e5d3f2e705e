//! [`Client`]: a connection to one node, leader discovery, and the admin
//! calls (LEADER, CLUSTER, DESCRIBE, WEIGHT, DUMP, ADD, ASSIGN, REMOVE,
//! TRANSFER).

use dqlite_wire::{DecodeContext, File, NodeInfo, ReadMode, Request, Response, Role};
use tokio::time::{timeout, Instant};

use crate::transport::{remaining, Transport};
use crate::{Config, Database, Error, Result};

/// The node a LEADER request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Node id.
    pub id: u64,
    /// The address clients dial.
    pub address: String,
}

/// A node's failure domain and weight (DESCRIBE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Failure domain.
    pub failure_domain: u64,
    /// Weight (lower is preferred for roles).
    pub weight: u64,
}

/// A connection to one dqlite node.
///
/// [`Client::connect`] talks to exactly the node given (handshake only,
/// like go-dqlite's `client.New`), for admin calls on that node.
/// [`Client::find_leader`] runs leader discovery over a list of addresses
/// and registers with the leader (CLIENT/WELCOME), like go-dqlite's
/// connector; [`Client::open`] then opens a database on it.
///
/// ```no_run
/// # async fn example() -> dqlite_client::Result<()> {
/// use dqlite_client::{Client, Config};
/// let mut node = Client::connect("127.0.0.1:9001", &Config::default()).await?;
/// for member in node.cluster().await? {
///     println!("{} {} {:?}", member.id, member.address, member.role);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    pub(crate) transport: Transport,
    config: Config,
}

impl Client {
    /// Connects to one node, whatever its role.
    pub async fn connect(address: &str, config: &Config) -> Result<Client> {
        let transport = Transport::dial(address, config).await?;
        Ok(Client {
            transport,
            config: config.clone(),
        })
    }

    /// Finds the leader among `addresses` and connects to it.
    ///
    /// Each round tries the addresses in order: dial, handshake, LEADER.
    /// A node that names itself is the leader; a node that names another
    /// is left for the named one, which must then name itself (one hop
    /// only). The leader connection is registered with CLIENT. Failed
    /// rounds back off exponentially; [`Config::connect_timeout`] and
    /// [`Config::max_rounds`] bound the whole search.
    ///
    /// ```no_run
    /// # async fn example() -> dqlite_client::Result<()> {
    /// use dqlite_client::{Client, Config};
    /// let mut leader = Client::find_leader(&["127.0.0.1:9001", "127.0.0.1:9002"], &Config::default()).await?;
    /// println!("leader: {}", leader.address());
    /// # Ok(()) }
    /// ```
    pub async fn find_leader<S: AsRef<str>>(addresses: &[S], config: &Config) -> Result<Client> {
        if addresses.is_empty() {
            return Err(Error::InvalidArgument("no server addresses given".into()));
        }
        let deadline = Instant::now() + config.connect_timeout;
        let mut attempts = 0u32;
        let mut last_error = None;
        'rounds: for round in 0..config.max_rounds.max(1) {
            let mut refused = 0usize;
            for address in addresses {
                let address = address.as_ref();
                let Some(left) = remaining(deadline) else {
                    break 'rounds;
                };
                let limit = left.min(config.attempt_timeout);
                attempts = attempts.saturating_add(1);
                match timeout(limit, attempt(address, config)).await {
                    Ok(Ok(transport)) => {
                        tracing::debug!(
                            leader = transport.address(),
                            attempts,
                            "connected to the leader"
                        );
                        return Ok(Client {
                            transport,
                            config: config.clone(),
                        });
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(address, error = %err, "leader discovery attempt failed");
                        if is_refused(&err, address) {
                            refused += 1;
                        }
                        // Retrying a peer that is not a dqlite node cannot help.
                        if matches!(err, Error::NotDqlite { .. }) {
                            return Err(err);
                        }
                        last_error = Some(err);
                    }
                    Err(_) => {
                        tracing::debug!(address, "leader discovery attempt timed out");
                        last_error = Some(Error::Timeout {
                            operation: "a leader discovery attempt",
                            address: address.to_owned(),
                            after: limit,
                        });
                    }
                }
            }
            if config.give_up_when_all_refuse && refused == addresses.len() {
                return Err(Error::Unreachable {
                    addresses: addresses.iter().map(|a| a.as_ref().to_owned()).collect(),
                });
            }
            if round + 1 < config.max_rounds {
                let Some(left) = remaining(deadline) else {
                    break;
                };
                tokio::time::sleep(config.backoff(round).min(left)).await;
            }
        }
        Err(Error::NoLeader {
            addresses: addresses.iter().map(|a| a.as_ref().to_owned()).collect(),
            attempts,
            last_error: last_error.map(Box::new),
        })
    }

    /// The address this client is connected to.
    pub fn address(&self) -> &str {
        self.transport.address()
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens (and creates) a database on this connection: OPEN with flags
    /// 0 and the VFS name "volatile", as go-dqlite sends. A read mode other
    /// than the default goes with the name (`NAME?dqlite_read_mode=MODE`),
    /// so a follower accepts the OPEN.
    pub async fn open(mut self, name: &str) -> Result<Database> {
        let read_mode = self.config.read_mode;
        let open_name = if read_mode == ReadMode::Leader {
            name.to_owned()
        } else {
            let sep = if name.contains('?') { '&' } else { '?' };
            format!("{name}{sep}{}={read_mode}", dqlite_wire::read_mode::PRAGMA)
        };
        let request = Request::Open {
            name: open_name,
            flags: 0,
            vfs: "volatile".to_owned(),
        };
        match self.call(&request).await? {
            Response::Db { id } => Ok(Database::new(self, name, id)),
            other => Err(self.unexpected("DB", &other)),
        }
    }

    /// Whom this node believes is the leader; `None` if it does not know
    /// (or is not a voter).
    pub async fn leader(&mut self) -> Result<Option<Leader>> {
        match self.call(&Request::Leader).await? {
            Response::Server { id, address } => Ok(leader_from(id, address)),
            other => Err(self.unexpected("SERVER", &other)),
        }
    }

    /// The cluster members with their roles (CLUSTER format 1).
    pub async fn cluster(&mut self) -> Result<Vec<NodeInfo>> {
        match self.call(&Request::Cluster { format: 1 }).await? {
            Response::Servers { nodes, .. } => Ok(nodes),
            other => Err(self.unexpected("SERVERS", &other)),
        }
    }

    /// This node's failure domain and weight.
    pub async fn describe(&mut self) -> Result<Metadata> {
        match self.call(&Request::Describe { format: 0 }).await? {
            Response::Metadata {
                failure_domain,
                weight,
            } => Ok(Metadata {
                failure_domain,
                weight,
            }),
            other => Err(self.unexpected("METADATA", &other)),
        }
    }

    /// Sets this node's weight.
    pub async fn set_weight(&mut self, weight: u64) -> Result<()> {
        self.expect_empty(&Request::Weight { weight }).await
    }

    /// This node's copy of a database: the main file and the WAL, as
    /// (name, bytes) pairs. Raise [`Config::max_message_size`] for
    /// databases near or above it.
    pub async fn dump(&mut self, database: &str) -> Result<Vec<File>> {
        let request = Request::Dump {
            name: database.to_owned(),
        };
        match self.call(&request).await? {
            Response::Files(files) => Ok(files),
            other => Err(self.unexpected("FILES", &other)),
        }
    }

    /// Adds a node (must be sent to the leader). The server adds it as a
    /// spare; for another role an ASSIGN follows, as go-dqlite's
    /// `Client.Add` does.
    pub async fn add(&mut self, id: u64, address: &str, role: Role) -> Result<()> {
        let request = Request::Add {
            id,
            address: address.to_owned(),
        };
        self.expect_empty(&request).await?;
        if role != Role::Spare {
            self.assign(id, role).await?;
        }
        Ok(())
    }

    /// Changes a node's role (must be sent to the leader).
    pub async fn assign(&mut self, id: u64, role: Role) -> Result<()> {
        let request = Request::Assign {
            id,
            role: Some(role.code()),
        };
        self.expect_empty(&request).await
    }

    /// Removes a node (must be sent to the leader).
    pub async fn remove(&mut self, id: u64) -> Result<()> {
        self.expect_empty(&Request::Remove { id }).await
    }

    /// Transfers leadership to node `id`, or to a node the cluster picks
    /// if `id` is 0 (must be sent to the leader).
    pub async fn transfer(&mut self, id: u64) -> Result<()> {
        self.expect_empty(&Request::Transfer { id }).await
    }

    async fn expect_empty(&mut self, request: &Request) -> Result<()> {
        match self.call(request).await? {
            Response::Empty => Ok(()),
            other => Err(self.unexpected("EMPTY", &other)),
        }
    }

    pub(crate) async fn call(&mut self, request: &Request) -> Result<Response> {
        self.transport
            .request(request, DecodeContext::default())
            .await
    }

    /// A protocol error for an unexpected response; the connection's
    /// position in the stream is then unknown, so it is marked broken.
    pub(crate) fn unexpected(&mut self, expected: &str, got: &Response) -> Error {
        self.transport.poison();
        self.transport.unexpected(expected, got)
    }
}

/// True when the listed `address` itself refused the connection (not a
/// leader it named: that one may just be restarting).
fn is_refused(err: &Error, address: &str) -> bool {
    matches!(err, Error::Connect { address: a, cause }
        if a == address && cause.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn leader_from(id: u64, address: String) -> Option<Leader> {
    (id != 0 || !address.is_empty()).then_some(Leader { id, address })
}

/// One discovery attempt starting at `address` (go-dqlite's
/// `connectAttemptOne`): accept a node only if it names itself.
async fn attempt(address: &str, config: &Config) -> Result<Transport> {
    let mut transport = Transport::dial(address, config).await?;
    let leader = ask_leader(&mut transport).await?;
    if leader == address {
        return register(transport).await;
    }
    drop(transport);
    tracing::debug!(address, leader = %leader, "following the reported leader");
    let mut transport = Transport::dial(&leader, config).await?;
    let reported = ask_leader(&mut transport).await?;
    if reported != leader {
        return Err(Error::LeaderMismatch {
            address: leader,
            reported,
        });
    }
    register(transport).await
}

async fn ask_leader(transport: &mut Transport) -> Result<String> {
    match transport
        .request(&Request::Leader, DecodeContext::default())
        .await?
    {
        Response::Server { address, .. } if address.is_empty() => Err(Error::LeaderUnknown {
            address: transport.address().to_owned(),
        }),
        Response::Server { address, .. } => Ok(address),
        other => Err(transport.unexpected("SERVER", &other)),
    }
}

async fn register(mut transport: Transport) -> Result<Transport> {
    match transport
        .request(&Request::Client { id: 0 }, DecodeContext::default())
        .await?
    {
        Response::Welcome { .. } => Ok(transport),
        other => Err(transport.unexpected("WELCOME", &other)),
    }
}
