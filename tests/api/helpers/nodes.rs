//! How a test's server is spawned: one server in this process, as most
//! tests run, or a cluster of two real binaries on one NATS whose requests
//! and sockets alternate between the nodes. A test written over [`Nodes`]
//! runs both ways through [`on_one_and_two_nodes!`].

use twizzle_api_server::config::Settings;

use super::app::{spawn_app_with, TestApp};
use super::cluster::Cluster;
use super::FakeWca;

/// Where a test's server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nodes {
    /// One server in this process, on its data directory.
    One,
    /// Two binaries in cluster mode on one NATS; each request and each
    /// socket goes to the other node than the last one did.
    Two,
}

impl Nodes {
    /// The server with the test settings, changed by `tweak`.
    ///
    /// # Panics
    ///
    /// For [`Nodes::Two`], where `nats-server` is missing: the test must
    /// have skipped before (as [`on_one_and_two_nodes!`] does).
    pub async fn spawn(self, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        match self {
            Nodes::One => spawn_app_with(tweak).await,
            Nodes::Two => {
                let wca = FakeWca::start();
                let cluster = Cluster::start(2, &wca, tweak).expect("nats-server is installed");
                cluster.app(wca).owning(cluster)
            }
        }
    }

    /// The server with the test settings.
    pub async fn app(self) -> TestApp {
        self.spawn(|_| {}).await
    }

    /// The server with the development sign-in (no WCA client secret).
    pub async fn dev_app(self) -> TestApp {
        self.spawn(|s| s.wca.client_secret = None).await
    }
}

/// For each `async fn NAME(nodes: Nodes)` named, a module `NAME` with two
/// tests: `on_one_node` runs it on one server, `on_two_nodes` on a
/// two-node cluster (skipped, saying so, where `nats-server` is missing).
macro_rules! on_one_and_two_nodes {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[actix_web::test]
            async fn on_one_node() {
                super::$test($crate::helpers::Nodes::One).await
            }

            #[actix_web::test]
            async fn on_two_nodes() {
                if !twizzle_actors::testkit::have_nats_server() {
                    return;
                }
                super::$test($crate::helpers::Nodes::Two).await
            }
        }
    )+};
}
pub(crate) use on_one_and_two_nodes;
