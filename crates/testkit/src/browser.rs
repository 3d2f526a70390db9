//! A real browser for the tests: headless Chromium (the Debian package) driven over
//! WebDriver by fantoccini through chromedriver, started per test in a process group
//! of its own and always stopped with it; screenshots of each step; axe-core (from
//! npm, installed by `scripts/services.sh`) run in the page for accessibility.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Where `scripts/services.sh` installs axe-core (inside the workspace's `target`).
fn axe_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/browser/node_modules/axe-core/axe.min.js")
}

/// One browser session; everything it started ends with it.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    shots: PathBuf,
}

/// An accessibility rule the page breaks, as axe-core reports it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub id: String,
    pub impact: String,
    pub help: String,
    pub targets: Vec<String>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; screenshots go to `shots`.
    pub async fn start(shots: PathBuf) -> Self {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: the browser tests need the Debian package {what} (scripts/services.sh installs it)"
            );
        }
        std::fs::create_dir_all(&shots).expect("the screenshots' directory");
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address").port()
        };
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group: chromedriver and every Chromium process it starts
                // are stopped together.
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut browser = Self {
            client: None,
            driver,
            shots,
        };
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--window-size=1280,1000", "--lang=en-GB"],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() > deadline => {
                    panic!("chromedriver did not start a Chromium session: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        browser.client = Some(client);
        browser
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Types `text` into the field `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.ok();
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks the submit button `css` and waits until the page it leads to has
    /// loaded: a next step must not race the form's own navigation.
    pub async fn submit(&self, css: &str) {
        self.run("window.__bakeryBeforeSubmit = true; return true;")
            .await;
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let loaded = self
                .run("return !window.__bakeryBeforeSubmit && document.readyState === 'complete';")
                .await;
            if loaded == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                panic!("submitting {css} led to no new page");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client()
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let shot = self.screenshot("failed").await;
                panic!(
                    "no {css} on {} ({e}); the page says {:?}; screenshot {}",
                    self.url().await,
                    self.text("body").await,
                    shot.display()
                )
            }
        }
    }

    /// The text of the page's `css` element (empty if there is none).
    pub async fn text(&self, css: &str) -> String {
        match self.client().find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Whether the page has an element `css` now.
    pub async fn has(&self, css: &str) -> bool {
        self.client().find(Locator::Css(css)).await.is_ok()
    }

    /// Runs `script` in the page and answers what it returns (null on an error).
    pub async fn run(&self, script: &str) -> Value {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap_or(Value::Null)
    }

    /// Waits up to `limit` for the text of `css` to contain `wanted`.
    pub async fn wait_text(&self, css: &str, wanted: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.text(css).await.contains(wanted) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The page's address now.
    pub async fn url(&self) -> String {
        self.client()
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Writes a screenshot of the page as `<shots>/<name>.png` and answers its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// The serious and critical accessibility violations axe-core finds in the page.
    pub async fn accessibility_violations(&self) -> Vec<Violation> {
        let axe = std::fs::read_to_string(axe_path()).unwrap_or_else(|e| {
            panic!(
                "axe-core is missing at {} ({e}): scripts/services.sh installs it from npm",
                axe_path().display()
            )
        });
        self.client()
            .execute(&axe, vec![])
            .await
            .expect("load axe-core into the page");
        let report = self
            .client()
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] }).then(r => done(r.violations), e => done(String(e)));",
                vec![],
            )
            .await
            .expect("run axe-core");
        let Value::Array(violations) = report else {
            panic!("axe-core failed: {report}")
        };
        violations
            .into_iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| Violation {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                impact: v["impact"].as_str().unwrap_or_default().to_string(),
                help: v["help"].as_str().unwrap_or_default().to_string(),
                targets: v["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| n["target"].to_string())
                    .collect(),
            })
            .collect()
    }

    /// Ends the session and stops chromedriver and Chromium.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}
