//! Presence leases: which node has which sockets, so that every node
//! counts every node's viewers and senders (see [`super`] for the keys).
//!
//! Each node keeps one entry in [`NODES_BUCKET`], `node.<nodeID>`, listing
//! its sender and viewer sockets per stream and when it was written. The
//! node writes it when its counts change (the registry debounces that) and
//! again every [`refresh_interval`]; the bucket's `max_age` is the lease,
//! so the entry of a node killed with -9 goes within a lease, and readers
//! count an entry older than that as gone before JetStream drops it. A node
//! that stops cleanly deletes its entry. Every node follows the bucket with
//! a KV watch, started over after a reconnect and every
//! [`super::streams::RESYNC_INTERVAL`], so that no dead watch lingers.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use actix::Recipient;
use async_nats::jetstream::kv::{self, Entry, Operation};
use async_nats::jetstream::stream::StorageType;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::streams::RESYNC_INTERVAL;
use super::{entries, key_value, Nats, REQUEST_TIMEOUT};
use crate::ids::StreamId;
use crate::store::journal::epoch_ms;
use crate::store::{ClusterNews, SocketCounts};

/// The nodes' presence leases.
pub const NODES_BUCKET: &str = "twizzle_nodes";
/// The prefix of a node's key in [`NODES_BUCKET`].
const NODE_PREFIX: &str = "node.";
/// How often a watch checks the connection, to start over once it is back.
pub(crate) const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// How often a node writes its lease unchanged: six times a lease, so
/// that a few lost writes in a row do not make a live node look gone.
pub fn refresh_interval(lease: Duration) -> Duration {
    (lease / 6).max(Duration::from_millis(100))
}

/// A lease as kept.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseDoc {
    /// When it was written, in ms since the Unix epoch.
    #[serde(rename = "atMs")]
    at_ms: u64,
    /// The node's sockets, by stream ID; streams without any are left out.
    streams: BTreeMap<String, SocketCounts>,
}

/// This node's lease, written in the background; see [`Presence::start`].
pub(crate) struct Presence {
    /// The sockets to write next; `None` asks for the lease to be deleted.
    latest: watch::Sender<Option<Vec<(StreamId, SocketCounts)>>>,
    /// Told once the lease is deleted.
    withdrawn: Option<oneshot::Receiver<()>>,
}

impl Presence {
    /// Starts writing node `node`'s lease (no sockets yet) and following
    /// the other nodes' leases, telling `news`. Both run on this thread
    /// until `news`'s actor stops.
    pub fn start(
        nats: Nats,
        node: String,
        lease: Duration,
        news: Recipient<ClusterNews>,
    ) -> Presence {
        let (latest, wanted) = watch::channel(Some(Vec::new()));
        let (gone, withdrawn) = oneshot::channel();
        let bucket = nats.clone();
        let writer = node.clone();
        actix::spawn(async move {
            let store = nodes_bucket(&bucket, lease).await;
            actix::spawn(write_lease(store.clone(), writer, lease, wanted, gone));
            follow_leases(nats, store, node, lease, news).await;
        });
        Presence {
            latest,
            withdrawn: Some(withdrawn),
        }
    }

    /// Has `sockets` written as the lease now.
    pub fn publish(&self, sockets: Vec<(StreamId, SocketCounts)>) {
        self.latest.send_replace(Some(sockets));
    }

    /// Deletes the lease; resolves once it is gone, or after a bound.
    pub fn withdraw(&mut self) -> impl Future<Output = ()> + 'static {
        self.latest.send_replace(None);
        let withdrawn = self.withdrawn.take();
        async move {
            if let Some(withdrawn) = withdrawn {
                let _ = actix::clock::timeout(REQUEST_TIMEOUT * 2, withdrawn).await;
            }
        }
    }
}

/// [`NODES_BUCKET`], made where absent with `lease` as its `max_age`;
/// tried again every [`CONNECTION_CHECK`] until it works.
async fn nodes_bucket(nats: &Nats, lease: Duration) -> kv::Store {
    loop {
        let made = key_value(
            &nats.js,
            kv::Config {
                bucket: NODES_BUCKET.to_owned(),
                description: "twizzle nodes' presence leases, by node ID".to_owned(),
                history: 1,
                max_age: lease,
                storage: StorageType::File,
                ..Default::default()
            },
        )
        .await;
        match made {
            Ok(store) => return store,
            Err(e) => {
                log::warn!("NATS: cannot set up the presence bucket: {e}");
                actix::clock::sleep(CONNECTION_CHECK).await;
            }
        }
    }
}

/// Writes the lease whenever `wanted` changes and every refresh, until it
/// is asked to delete it (or its sender is dropped); then tells `gone`.
async fn write_lease(
    store: kv::Store,
    node: String,
    lease: Duration,
    mut wanted: watch::Receiver<Option<Vec<(StreamId, SocketCounts)>>>,
    gone: oneshot::Sender<()>,
) {
    let key = format!("{NODE_PREFIX}{node}");
    let mut failing = false;
    loop {
        let sockets = wanted.borrow_and_update().clone();
        let Some(sockets) = sockets else { break };
        let doc = LeaseDoc {
            at_ms: epoch_ms(SystemTime::now()),
            streams: sockets
                .into_iter()
                .map(|(id, counts)| (id.as_str().to_owned(), counts))
                .collect(),
        };
        let value = serde_json::to_vec(&doc).unwrap_or_default();
        match store.put(&key, value.into()).await {
            Ok(_) if failing => {
                log::info!("NATS: presence lease written again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                log::warn!("NATS: cannot write the presence lease: {e}");
                failing = true;
            }
            Err(_) => {}
        }
        let changed = actix::clock::timeout(refresh_interval(lease), wanted.changed()).await;
        if let Ok(Err(_)) = changed {
            // The registry is gone without withdrawing: the lease expires.
            return;
        }
    }
    match store.delete(&key).await {
        Ok(()) => log::info!("NATS: presence lease of node {node} withdrawn"),
        Err(e) => log::warn!("NATS: presence lease left to expire: {e}"),
    }
    let _ = gone.send(());
}

/// Tells `news` of every other node's lease as it is written or deleted,
/// until `news`'s actor stops.
async fn follow_leases(
    nats: Nats,
    store: kv::Store,
    own: String,
    lease: Duration,
    news: Recipient<ClusterNews>,
) {
    let filter = format!("{NODE_PREFIX}>");
    let mut loaded = false;
    while news.connected() {
        if !loaded {
            // Read whole first, so that the registry knows when it has
            // every live node's lease; the watch then tells of changes.
            match entries(&store, NODE_PREFIX).await {
                Ok(leases) => {
                    for (key, value, _) in leases {
                        told(&key, Operation::Put, &value, &own, lease, &news);
                    }
                    news.do_send(ClusterNews::PresenceLoaded);
                    loaded = true;
                }
                Err(e) => {
                    log::debug!("NATS: cannot read the presence leases yet: {e}");
                    actix::clock::sleep(CONNECTION_CHECK).await;
                    continue;
                }
            }
        }
        let watch = match store.watch_with_history(&filter).await {
            Ok(watch) => watch,
            Err(e) => {
                log::debug!("NATS: cannot watch the presence leases yet: {e}");
                actix::clock::sleep(CONNECTION_CHECK).await;
                continue;
            }
        };
        follow_watch(&nats, watch, &news, |entry| {
            told(
                &entry.key,
                entry.operation,
                &entry.value,
                &own,
                lease,
                &news,
            );
        })
        .await;
    }
}

/// Tells `news` of the lease at `key`, unless it is this node's own.
fn told(
    key: &str,
    operation: Operation,
    value: &[u8],
    own: &str,
    lease: Duration,
    news: &Recipient<ClusterNews>,
) {
    let Some(node) = key.strip_prefix(NODE_PREFIX) else {
        return;
    };
    if node == own {
        return;
    }
    let node = node.to_owned();
    match operation {
        Operation::Put => {
            let Ok(doc) = serde_json::from_slice::<LeaseDoc>(value) else {
                log::warn!("NATS: {key} is not a presence lease; skipped");
                return;
            };
            let age_ms = epoch_ms(SystemTime::now()).saturating_sub(doc.at_ms);
            let age = Duration::from_millis(age_ms).min(lease);
            let streams = doc
                .streams
                .into_iter()
                .filter_map(|(id, counts)| Some((StreamId::parse(&id)?, counts)))
                .collect();
            news.do_send(ClusterNews::Presence { node, streams, age });
        }
        Operation::Delete | Operation::Purge => {
            news.do_send(ClusterNews::NodeGone { node });
        }
    }
}

/// Hands each entry `watch` yields to `on_entry` until the watch ends or
/// fails, the connection comes back after it was lost (a watch may not
/// have survived that), [`RESYNC_INTERVAL`] passes, or `news`'s actor
/// stops. The caller then starts a watch with history again, so whatever
/// a dead watch missed is told then.
pub(crate) async fn follow_watch(
    nats: &Nats,
    mut watch: kv::Watch,
    news: &Recipient<ClusterNews>,
    mut on_entry: impl FnMut(Entry),
) {
    let started = Instant::now();
    let mut was_down = false;
    loop {
        let next = std::pin::pin!(watch.next());
        let tick = std::pin::pin!(actix::clock::sleep(CONNECTION_CHECK));
        match select(next, tick).await {
            Either::Left((Some(Ok(entry)), _)) => on_entry(entry),
            Either::Left((Some(Err(e)), _)) => {
                log::debug!("NATS: a watch failed, starting over: {e}");
                return;
            }
            Either::Left((None, _)) => return,
            Either::Right(_) => {
                let up = nats.connected().is_ok();
                if (up && was_down) || !news.connected() || started.elapsed() >= RESYNC_INTERVAL {
                    return;
                }
                was_down |= !up;
            }
        }
    }
}
