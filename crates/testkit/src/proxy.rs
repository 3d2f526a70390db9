//! A TCP forwarder the tests can cut: the way to take a database or a store away
//! from one topology without stopping the server other tests share.

use std::net::SocketAddr;
use std::sync::Mutex;

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
}

impl CuttableProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("a bound address");
        let (cuts, _) = watch::channel(0);
        let proxy = Self {
            addr,
            target,
            cuts,
            listening: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
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
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
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
