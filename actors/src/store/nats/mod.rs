//! The cluster mode's stores: every piece of durable state in NATS
//! JetStream, so that nodes sharing one NATS share their state.
//!
//! What is where (see also the README's "Cluster mode"):
//!
//! - KV bucket [`USERS_BUCKET`]: `user.<userID>`, each user's record (as
//!   the local journal writes it), changed by compare-and-set on its
//!   revision; `wca.<account>` and `dev.<hex of the name>`, the user each
//!   WCA account or development name signs in as, created only where
//!   absent, so that two nodes never create the same user twice;
//!   `token.<hash>`, the user an access token's hash belongs to, written
//!   before the record that makes it valid, so another node finds it;
//! - KV bucket [`CLAIMS_BUCKET`]: `<hash>`, each unredeemed claim token,
//!   which JetStream deletes when it expires (a per-key TTL); redeemed by
//!   compare-and-set, so a claim token works once;
//! - KV bucket [`STREAMS_BUCKET`]: `stream.<streamID>`, each stream's record:
//!   senders, creation, since when it is idle, when it ended; created only
//!   where absent; `owner.<userID>`, the streams each user created that
//!   may be open, for the per-user limit over every node (see [`streams`]);
//! - KV bucket [`SNAPSHOTS_BUCKET`]: `<streamID>`, each stream's snapshot:
//!   its replay, which offsets the recording holds, and up to which
//!   JetStream sequence;
//! - KV bucket [`presence::NODES_BUCKET`]: `node.<nodeID>`, each node's
//!   presence lease: its sockets per stream (see [`presence`]);
//! - stream [`EVENTS_STREAM`], subjects `twizzle.events.<streamID>`: each
//!   stream's recording, one message per event, its payload the recording
//!   line (`{"offset":n,"receivedAt":ms,"event":…,"data":…}`) and a
//!   `Twizzle-Sender` header, appended with the sequence of the subject's
//!   last message expected, so that an append from a node that has not
//!   seen the last event is refused (see [`recording`]);
//! - core subjects `twizzle.feed.<streamID>`: each message JetStream
//!   stored on the stream's recording subject, republished by JetStream
//!   (only what it stored: a refused append reaches plain subscribers of
//!   the recording's subject too), and the events past a recording's
//!   quota, which are not recorded, sent there by the node that took them.
//!
//! Every node's stream follows `twizzle.feed.<streamID>` and relays what
//! any node appended; the offsets in the payloads show it what it missed,
//! which it reads back from the recording.
//!
//! The [`Client`] is connected once (see [`Nats::connect`]) on the thread
//! that starts the server; its connection task runs there, and the actors
//! on other threads use clones of it. Every call checks first that the
//! client is connected, and answers `storage unavailable` at once when it
//! is not; every request has a timeout ([`REQUEST_TIMEOUT`]), so nothing
//! waits on a NATS that went away. The client reconnects by itself.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{StoreError, Stores};
use crate::metrics::EngineMetrics;

pub mod presence;
pub mod recording;
pub mod streams;
pub mod users;

/// Users and their sign-in indexes.
pub const USERS_BUCKET: &str = "twizzle_users";
/// Unredeemed claim tokens.
pub const CLAIMS_BUCKET: &str = "twizzle_claims";
/// Stream records.
pub const STREAMS_BUCKET: &str = "twizzle_streams";
/// Each stream's snapshot of its replay.
pub const SNAPSHOTS_BUCKET: &str = "twizzle_snapshots";
/// The stream that holds every recording.
pub const EVENTS_STREAM: &str = "TWIZZLE_EVENTS";
/// The subjects of [`EVENTS_STREAM`]: one per broadcast stream.
pub const EVENTS_SUBJECTS: &str = "twizzle.events.>";
/// Where JetStream republishes each message it stored on
/// [`EVENTS_SUBJECTS`]: `twizzle.feed.<streamID>`, which the nodes follow.
pub const FEED_SUBJECTS: &str = "twizzle.feed.>";
/// How long a request to NATS may take before it counts as unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the readiness probe waits for NATS: well within the
/// readiness check's one second for the actor that asks.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the first connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two attempts to reconnect.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How long a deleted key's marker stays before JetStream drops it; a
/// compare-and-set against the deleted revision fails all the same after.
const MARKER_TTL: Duration = Duration::from_secs(60);
/// How long an ephemeral consumer left behind (a read cut off) lives.
const CONSUMER_IDLE: Duration = Duration::from_secs(30);
/// Messages one fetch of a read asks for at most: well under the client's
/// buffer of a subscription.
const FETCH_MAX: usize = 1024;
/// The oldest server this store runs on: per-key TTLs came in 2.11.
const MIN_SERVER: (u64, u64) = (2, 11);

/// A connected client and the JetStream objects the stores use. Cheap to
/// clone: each store and recording holds one.
#[derive(Clone)]
pub struct Nats {
    /// The connection, for its state.
    client: Client,
    /// JetStream, with [`REQUEST_TIMEOUT`] on every request.
    js: jetstream::Context,
    /// [`USERS_BUCKET`].
    users: kv::Store,
    /// [`CLAIMS_BUCKET`].
    claims: kv::Store,
    /// [`STREAMS_BUCKET`].
    streams: kv::Store,
    /// [`SNAPSHOTS_BUCKET`].
    snapshots: kv::Store,
    /// [`EVENTS_STREAM`].
    events: stream::Stream,
    /// How many times the connection came back; followers of recordings
    /// wait on it to compare with what they may have missed meanwhile.
    reconnected: tokio::sync::watch::Receiver<u64>,
    /// What the engine shows an operator.
    engine: EngineMetrics,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

/// `url` without what it may carry of a password, for a log line.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if scheme.is_empty() {
        rest.to_owned()
    } else {
        format!("{scheme}://{rest}")
    }
}

/// What a failed request to NATS is told as: NATS cannot be reached, or
/// did not answer in time.
pub(crate) fn unavailable(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl Nats {
    /// Connects to the NATS server at `url` (several may be given, comma
    /// separated) and makes sure the buckets and the stream exist, as
    /// configured here. Fails if the server cannot be reached within
    /// [`CONNECT_TIMEOUT`], has no JetStream, or is older than 2.11.
    pub async fn connect(url: &str) -> Result<Nats, StoreError> {
        let shown = redacted_url(url);
        let engine = EngineMetrics::default();
        let (came_back, reconnected) = tokio::sync::watch::channel(0u64);
        let counted = engine.reconnects.clone();
        let first = Arc::new(AtomicBool::new(true));
        let client = ConnectOptions::new()
            .name("twizzle-api-server")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let exp = u32::try_from(attempts.min(10)).unwrap_or(10);
                Duration::from_millis(50 * 2u64.pow(exp)).min(MAX_RECONNECT_DELAY)
            })
            .event_callback(move |event| {
                let (came_back, counted, first) =
                    (came_back.clone(), counted.clone(), first.clone());
                async move {
                    match event {
                        Event::Connected => {
                            log::info!("NATS: connected");
                            if !first.swap(false, Ordering::Relaxed) {
                                counted.inc();
                            }
                            came_back.send_modify(|n| *n += 1);
                        }
                        Event::Disconnected => {
                            log::warn!("NATS: disconnected; storage unavailable until it is back")
                        }
                        Event::SlowConsumer(sid) => {
                            log::warn!("NATS: subscription {sid} fell behind and lost messages")
                        }
                        other => log::info!("NATS: {other}"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| unavailable(&format!("cannot connect to NATS at {shown}"), e))?;
        let info = client.server_info();
        if !info.jetstream {
            return Err(StoreError::Failed(format!(
                "the NATS server at {shown} has no JetStream (start it with -js)"
            )));
        }
        if version(&info.version).is_some_and(|v| v < MIN_SERVER) {
            return Err(StoreError::Failed(format!(
                "the NATS server at {shown} is {}; this needs {}.{} or newer",
                info.version, MIN_SERVER.0, MIN_SERVER.1
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let bucket = |name: &str, description: &str| kv::Config {
            bucket: name.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage: StorageType::File,
            limit_markers: Some(MARKER_TTL),
            ..Default::default()
        };
        let kv_failed = |e| StoreError::Failed(format!("cannot set up a NATS KV bucket: {e}"));
        let users = key_value(
            &js,
            bucket(
                USERS_BUCKET,
                "twizzle users, by ID, WCA account and development name",
            ),
        )
        .await
        .map_err(kv_failed)?;
        let claims = key_value(&js, bucket(CLAIMS_BUCKET, "twizzle claim tokens, by hash"))
            .await
            .map_err(kv_failed)?;
        let streams = key_value(&js, bucket(STREAMS_BUCKET, "twizzle streams, by ID"))
            .await
            .map_err(kv_failed)?;
        let snapshots = key_value(
            &js,
            bucket(SNAPSHOTS_BUCKET, "twizzle streams' replay snapshots, by ID"),
        )
        .await
        .map_err(kv_failed)?;
        let replicas = match js.get_stream(EVENTS_STREAM).await {
            Ok(existing) => kept_replicas(Some(&existing.cached_info().config)),
            Err(_) => 1,
        };
        js.create_or_update_stream(stream::Config {
            name: EVENTS_STREAM.to_owned(),
            description: Some("twizzle recordings: one subject per stream".to_owned()),
            subjects: vec![EVENTS_SUBJECTS.to_owned()],
            storage: StorageType::File,
            allow_direct: true,
            // What the nodes' streams follow: a message on the recording's
            // subject reaches core subscribers there whether or not
            // JetStream took it (an append refused for its expected
            // sequence included); one republished was stored.
            republish: Some(stream::Republish {
                source: EVENTS_SUBJECTS.to_owned(),
                destination: FEED_SUBJECTS.to_owned(),
                headers_only: false,
            }),
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError::Failed(format!("cannot set up the NATS stream: {e}")))?;
        let events = js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| StoreError::Failed(format!("cannot open the NATS stream: {e}")))?;
        log::info!(
            "state in NATS JetStream at {shown} (server {})",
            info.version
        );
        Ok(Nats {
            client,
            js,
            users,
            claims,
            streams,
            snapshots,
            events,
            reconnected,
            engine,
        })
    }

    /// `Unavailable` at once while the client is not connected: a request
    /// made now would only wait for its timeout.
    pub(crate) fn connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(StoreError::Unavailable(format!("NATS is {state:?}"))),
        }
    }

    /// Whether a write would be taken now: connected, JetStream answers
    /// within [`CHECK_TIMEOUT`], and the account has storage left.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.connected()?;
        let account = tokio::time::timeout(CHECK_TIMEOUT, self.js.query_account())
            .await
            .map_err(|_| StoreError::Unavailable("JetStream did not answer in time".to_owned()))?
            .map_err(|e| unavailable("JetStream", e))?;
        match account.limits.max_storage {
            Some(max) if max > 0 && account.storage >= max as u64 => Err(StoreError::Full),
            _ => Ok(()),
        }
    }
}

/// The replicas an operator gave an existing stream (a KV bucket is one
/// too), which a node setting it up again keeps: one where there is none.
fn kept_replicas(existing: Option<&stream::Config>) -> usize {
    existing.map_or(1, |config| config.num_replicas.max(1))
}

/// Sets up a KV bucket as `config` says, but with the replicas it has if
/// it exists: an operator raises them (`nats stream edit KV_<bucket>
/// --replicas 3`), and a node starting must not lower them again.
pub(crate) async fn key_value(
    js: &jetstream::Context,
    mut config: kv::Config,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    if let Ok(existing) = js.get_stream(format!("KV_{}", config.bucket)).await {
        config.num_replicas = kept_replicas(Some(&existing.cached_info().config));
    }
    js.create_or_update_key_value(config).await
}

/// `major.minor` of a server version such as `2.15.1`.
fn version(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl Stores {
    /// The stores in NATS JetStream at `url` (see [`self`]); fails if it
    /// cannot be reached or set up.
    pub async fn nats(url: &str) -> Result<Stores, StoreError> {
        let nats = Nats::connect(url).await?;
        Ok(Stores {
            users: Box::new(users::NatsUsers::new(nats.clone())),
            engine: Some(nats.engine.clone()),
            streams: Box::new(streams::NatsStreams::new(nats)),
        })
    }
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    /// Its subject.
    pub subject: String,
    /// Its sequence in the stream (a KV entry's revision).
    pub seq: u64,
    /// Its payload.
    pub payload: Bytes,
    /// Whether it marks a deleted key (KV) rather than a value.
    pub deleted: bool,
    /// The value of its `Twizzle-Sender` header, if it has one.
    pub sender: Option<String>,
}

/// Reads a stream's messages on a subject filter in order, a batch at a
/// time, through an ephemeral consumer deleted at the end.
pub(crate) struct Scan {
    /// The stream read.
    stream: stream::Stream,
    /// The consumer, until [`Scan::finish`].
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
    /// Messages that matched when the consumer was made and are not read yet.
    left: usize,
}

impl Scan {
    /// Starts reading `stream`'s messages on `filter`, as `deliver` says.
    pub async fn start(
        stream: &stream::Stream,
        filter: String,
        deliver: DeliverPolicy,
    ) -> Result<Scan, StoreError> {
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter,
                deliver_policy: deliver,
                ack_policy: AckPolicy::None,
                inactive_threshold: CONSUMER_IDLE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("cannot read from JetStream", e))?;
        let left = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
        Ok(Scan {
            stream: stream.clone(),
            consumer: Some(consumer),
            left,
        })
    }

    /// Whether every message that matched has been read.
    pub fn done(&self) -> bool {
        self.left == 0
    }

    /// The next messages, at most `max`; none once [`Scan::done`].
    pub async fn next(&mut self, max: usize) -> Result<Vec<Read>, StoreError> {
        let want = self.left.min(max).min(FETCH_MAX);
        let Some(consumer) = &self.consumer else {
            return Ok(Vec::new());
        };
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .expires(REQUEST_TIMEOUT)
            .messages()
            .await
            .map_err(|e| unavailable("cannot read from JetStream", e))?;
        let mut read = Vec::with_capacity(want);
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| unavailable("reading from JetStream", e))?;
            let info = message
                .info()
                .map_err(|e| StoreError::Failed(format!("a message without its metadata: {e}")))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let deleted = message.headers.as_ref().is_some_and(|headers| {
                headers.get("Nats-Marker-Reason").is_some()
                    || headers
                        .get("KV-Operation")
                        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
            });
            let sender = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(recording::SENDER_HEADER))
                .map(|value| value.as_str().to_owned());
            read.push(Read {
                subject: message.subject.to_string(),
                seq,
                payload: message.payload.clone(),
                deleted,
                sender,
            });
            self.left = usize::try_from(pending).unwrap_or(usize::MAX);
            if read.len() >= want {
                break;
            }
        }
        if read.len() < want {
            // Messages can go while they are read (a claim token that
            // expired); only the consumer knows whether any are left.
            let mut consumer = consumer.clone();
            let info = consumer
                .info()
                .await
                .map_err(|e| unavailable("reading from JetStream was cut short", e))?;
            self.left = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
            if self.left > 0 && read.is_empty() {
                return Err(StoreError::Unavailable(
                    "reading from JetStream was cut short".to_owned(),
                ));
            }
        }
        Ok(read)
    }

    /// Every message left.
    pub async fn rest(&mut self) -> Result<Vec<Read>, StoreError> {
        let mut all = Vec::new();
        while !self.done() {
            let batch = self.next(FETCH_MAX).await?;
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        Ok(all)
    }

    /// Deletes the consumer; one that cannot be deleted goes by itself
    /// after [`CONSUMER_IDLE`].
    pub async fn finish(mut self) {
        if let Some(consumer) = self.consumer.take() {
            let name = consumer.cached_info().name.clone();
            if let Err(e) = self.stream.delete_consumer(&name).await {
                log::debug!("NATS: consumer {name} left to expire: {e}");
            }
        }
    }
}

/// The live value of every key of `bucket` under `prefix` (`""` for all),
/// with its revision: `(key, value, revision)`.
pub(crate) async fn entries(
    bucket: &kv::Store,
    prefix: &str,
) -> Result<Vec<(String, Bytes, u64)>, StoreError> {
    let filter = format!("{}{prefix}>", bucket.prefix);
    let mut scan = Scan::start(&bucket.stream, filter, DeliverPolicy::LastPerSubject).await?;
    let read = scan.rest().await;
    scan.finish().await;
    Ok(read?
        .into_iter()
        .filter(|message| !message.deleted)
        .filter_map(|message| {
            let key = message.subject.strip_prefix(&bucket.prefix)?.to_owned();
            Some((key, message.payload, message.seq))
        })
        .collect())
}

#[cfg(test)]
mod tests;
