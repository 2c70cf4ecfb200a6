//! End-to-end tests: the real server on port 0, a fake WCA on loopback, and
//! awc's HTTP and WebSocket client.

mod browser;
mod busy;
mod clients;
mod closing;
mod cluster;
mod cluster_faults;
mod cluster_ops;
mod cluster_streams;
mod cluster_users;
mod demo;
mod deploy;
mod dev_sign_in;
mod disk;
mod helpers;
mod http;
mod limits;
mod logs;
mod metrics;
mod nats;
mod races;
mod recordings;
mod restart;
mod sign_in;
mod sockets;
mod sockets_protocol;
mod watch;
