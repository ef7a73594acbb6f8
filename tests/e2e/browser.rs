//! A headless Chromium driven through ChromeDriver, for the dashboard's tests. W3C WebDriver is
//! plain HTTP and JSON, so a few calls over `ureq` (already a test dependency) do what a driver
//! crate would, without its dependency tree; Debian's `chromium` and `chromium-driver` come from
//! `scripts/setup.sh --browser`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium of `width` x `height` CSS pixels.
    pub(crate) fn start(width: u32, height: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(std::env::var("GRAMZOOM_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts (scripts/setup.sh --browser installs it)");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags a closed network needs: no background fetches that would be refused.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": std::env::var("GRAMZOOM_CHROMIUM").unwrap_or("/usr/bin/chromium".into()), "args": args}
        }}});
        let mut b = Self { driver, base, session: String::new(), agent, _profile: profile };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        }
        .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(64 << 20).read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("webdriver {path}: {e}: {text}"));
        assert!(status < 400, "webdriver {method} {path}: {status} {}", v["value"]);
        v["value"].clone()
    }

    fn session(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub(crate) fn open(&self, url: &str) {
        self.call("POST", &self.session("/url"), Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub(crate) fn eval(&self, script: &str, args: Value) -> Value {
        self.call("POST", &self.session("/execute/sync"), Some(json!({ "script": script, "args": args })))
    }

    /// Runs an async script: it calls `arguments[arguments.length - 1]` with its result.
    pub(crate) fn eval_async(&self, script: &str) -> Value {
        self.call("POST", &self.session("/execute/async"), Some(json!({ "script": script, "args": [] })))
    }

    fn element(&self, css: &str) -> String {
        let v = self.call("POST", &self.session("/element"), Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    /// Resizes the window to `width` x `height` CSS pixels (a phone, a laptop).
    pub(crate) fn resize(&self, width: u32, height: u32) {
        self.call("POST", &self.session("/window/rect"), Some(json!({ "width": width, "height": height })));
    }

    pub(crate) fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &self.session(&format!("/element/{id}/click")), None);
    }

    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call("POST", &self.session(&format!("/element/{id}/value")), Some(json!({ "text": text })));
    }

    /// The text of the open `confirm()` dialog, accepted.
    pub(crate) fn accept_dialog(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}{}", self.base, self.session("/alert/text"));
            let mut r = self.agent.get(&url).call().unwrap();
            if r.status().as_u16() == 200 {
                let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                self.call("POST", &self.session("/alert/accept"), None);
                return v["value"].as_str().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < deadline, "no dialog opened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `script` (returning a value) until `done` holds; panics after `secs` with `what`.
    pub(crate) fn wait_for(&self, secs: u64, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(script, json!([]));
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the viewport to `path`.
    pub(crate) fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let v = self.call("GET", &self.session("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Runs axe-core on the page; the violations, one line each.
    pub(crate) fn accessibility_violations(&self, axe: &str) -> Vec<String> {
        self.eval(axe, json!([]));
        let v = self.eval_async(
            "const done = arguments[arguments.length - 1];\
             axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map(v => \
               v.id + ' (' + v.impact + '): ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))\
             .catch(e => done(['axe failed: ' + e]));",
        );
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}{}", self.base, self.session(""));
            let _ = self.agent.delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// axe-core's script, from `scripts/setup.sh --browser`.
pub(crate) fn axe_script() -> String {
    let deps = std::env::var("GRAMZOOM_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gramzoom"));
    let path = deps.join("npm/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh --browser installs axe-core)", path.display()))
}

/// Where the tests leave their screenshots: `target/screenshots`, or `$GRAMZOOM_SCREENSHOTS`.
pub(crate) fn screenshots_dir() -> PathBuf {
    std::env::var("GRAMZOOM_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| crate::helpers::repo_root().join("target"));
        target.join("screenshots")
    })
}
