//! A TCP forwarder the tests can cut: the way to take a database or a store away
//! from one topology without stopping the server other tests share. It can also
//! delay what the client sends (a slow link, as `tc netem delay` on the client's
//! side would make it, which these kernels lack).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CuttableProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    /// Counts cuts: the listener and every connection end when it moves past the
    /// value they started under, even if the proxy is restored at once (a flag set
    /// and cleared before a task looked at it would be missed).
    cuts: watch::Sender<u64>,
    listening: Mutex<Option<JoinHandle<()>>>,
    /// How long each chunk the client sends waits before it goes on, in ms.
    latency_ms: Arc<AtomicU64>,
}

impl CuttableProxy {
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_at("127.0.0.1:0", target).await
    }

    /// The same, listening on `listen` (an address other hosts reach).
    pub async fn start_at(listen: &str, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("bind proxy");
        let addr = listener.local_addr().expect("a bound address");
        let (cuts, _) = watch::channel(0);
        let proxy = Self {
            addr,
            target,
            cuts,
            listening: Mutex::new(None),
            latency_ms: Arc::new(AtomicU64::new(0)),
        };
        proxy.serve(listener);
        proxy
    }

    /// Delays everything the clients send from now on by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let latency_ms = self.latency_ms.clone();
        let mut cuts = self.cuts.subscribe();
        let epoch = *cuts.borrow();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = cuts.wait_for(|now| *now != epoch) => return,
                };
                let Ok((mut inbound, _)) = accepted else {
                    return;
                };
                let mut cuts = cuts.clone();
                let latency_ms = latency_ms.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (from_client, mut to_client) = inbound.split();
                    let (mut from_server, to_server) = outbound.into_split();
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                delayed_copy(from_client, to_server, &latency_ms),
                                tokio::io::copy(&mut from_server, &mut to_client),
                            )
                        } => {}
                        _ = cuts.wait_for(|now| *now != epoch) => {}
                    }
                });
            }
        });
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Closes every connection and refuses new ones, as a stopped server would.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Listens again on the same address (after a [`Self::cut`]).
    pub async fn restore(&self) {
        let old = self
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(old) = old {
            // The old listener lets go of the address once it has seen the cut.
            let _ = old.await;
        }
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

/// Copies `from` to `to`, each chunk held back by the latency of the moment it was
/// read (in order: a chunk never overtakes an earlier one).
async fn delayed_copy(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    latency_ms: &AtomicU64,
) {
    let (chunks, mut due) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reading = async move {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            let at = tokio::time::Instant::now()
                + Duration::from_millis(latency_ms.load(Ordering::Relaxed));
            if chunks.send((at, buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writing = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}
