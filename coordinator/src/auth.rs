//! Who may call what. `serve --auth FILE` names the principals, one per line:
//!
//! ```text
//! # ROLE  NAME   TOKEN
//! user    alice  8f1c...        # submits, watches, downloads, cancels, deletes her own jobs
//! admin   ops    41d9...        # all of that, on every job
//! worker  gpu    77ab...        # the worker API only (render nodes)
//! ```
//!
//! Every call to the job or worker API must carry `authorization: Bearer TOKEN`; a gate in front
//! of each service turns away unknown tokens and wrong roles before any handler runs, and hands
//! the handler the caller's [`Principal`]. Handlers then check ownership (a user's jobs) and
//! binding (a worker's attempts, through its session). Health checks and reflection stay open
//! for probes.
//!
//! Without `--auth` the coordinator is open (every caller acts as an admin) and `serve` listens
//! on loopback only, unless told `--insecure`.

use proto::auth::{bearer, check_token};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
    Worker,
    /// May only scrape `/metrics` (a Prometheus server's token).
    Metrics,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            "worker" => Some(Self::Worker),
            "metrics" => Some(Self::Metrics),
            _ => None,
        }
    }
}

/// The caller of a request, put there by the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    pub name: String,
}

impl Principal {
    /// Everyone, on a coordinator without `--auth`.
    pub fn open() -> Self {
        Self { role: Role::Admin, name: String::new() }
    }

    /// Whether this principal may act on a job owned by `owner`.
    pub fn owns(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.name == owner
    }

    /// Whose jobs this principal sees: its own, or everyone's (`None`) for an admin (and for
    /// everyone on an open coordinator, where every caller is an admin).
    pub fn job_owner_filter(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(self.name.as_str())
    }
}

/// Shortest token accepted in an `--auth` file: guessing 20 random characters is hopeless.
pub const MIN_TOKEN_LEN: usize = 20;
/// Longest principal name.
pub const MAX_NAME_LEN: usize = 64;

/// The principals of an `--auth` file. Only tokens' SHA-256 digests are kept.
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
    /// Principals whose tokens are long enough but guessable (few distinct characters).
    weak: Vec<String>,
}

/// Bits a token's characters could carry at most, by its length and the characters it uses;
/// under [`WEAK_TOKEN_BITS`] it is guessable whatever its length (`aaaaaaaaaaaaaaaaaaaa`).
fn token_bits(token: &str) -> f64 {
    let mut distinct: Vec<char> = token.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    token.chars().count() as f64 * (distinct.len() as f64).log2()
}

/// What `openssl rand -hex 16` gives is 128 bits; below this a token is worth a warning.
const WEAK_TOKEN_BITS: f64 = 64.0;

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: nothing derived from a token goes into a log.
        f.debug_list().entries(self.entries.iter().map(|(_, p)| p)).finish()
    }
}

impl Tokens {
    /// Parses an `--auth` file. Errors name the line, never quote a token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<([u8; 32], Principal)> = Vec::new();
        let mut weak = Vec::new();
        for (i, line) in text.lines().enumerate() {
            // A comment starts a field: `#` inside a token is part of it (cutting the token
            // there once left a shorter, weaker token in force without a word).
            let fields: Vec<&str> = line.split_whitespace().take_while(|f| !f.starts_with('#')).collect();
            if fields.is_empty() {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", i + 1);
            let [role, name, token] = fields[..] else {
                return Err(at(format!("expected ROLE NAME TOKEN, got {} fields", fields.len())));
            };
            let role = Role::parse(role)
                .ok_or_else(|| at(format!("role must be user, admin, worker or metrics, got {:?}", short(role))))?;
            let name_ok =
                name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            if !name_ok {
                return Err(at(format!(
                    "name {:?} must be at most {MAX_NAME_LEN} characters of letters, digits and ._@-",
                    short(name)
                )));
            }
            check_token(token).map_err(|e| at(e.to_string()))?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(at(format!("the token of {name} is shorter than {MIN_TOKEN_LEN} characters")));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if entries.iter().any(|(d, _)| *d == digest) {
                return Err(at(format!("the token of {name} is already another line's token")));
            }
            if token_bits(token) < WEAK_TOKEN_BITS {
                weak.push(name.to_string());
            }
            entries.push((digest, Principal { role, name: name.to_string() }));
        }
        if entries.is_empty() {
            return Err("names no principal: add lines of ROLE NAME TOKEN".into());
        }
        Ok(Self { entries, weak })
    }

    /// Principals whose tokens are guessable although long enough: `serve` warns of them.
    pub fn weak(&self) -> &[String] {
        &self.weak
    }

    /// The principal holding `token`. Every entry is compared, each in constant time, so the
    /// answer's timing says nothing about which (or whether any) token was close.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (d, p) in &self.entries {
            let diff = d.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(p);
            }
        }
        found
    }
}

fn short(s: &str) -> String {
    crate::error::quoted_prefix(s)
}

/// The gate in front of a service: authenticates the caller, checks its role, and hands the
/// handler a [`Principal`] in the request's extensions.
#[derive(Clone)]
pub struct Gate {
    tokens: Option<Arc<Tokens>>,
    service: &'static str,
    allowed: &'static [Role],
}

impl Gate {
    pub fn new(tokens: Option<Arc<Tokens>>, service: &'static str, allowed: &'static [Role]) -> Self {
        Self { tokens, service, allowed }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = match &self.tokens {
            None => Principal::open(),
            Some(tokens) => {
                let token = bearer(request.metadata()).ok_or_else(|| {
                    Status::unauthenticated(
                        "missing credentials: send 'authorization: Bearer TOKEN' (gramzoom: --token-file or GRAMZOOM_TOKEN)",
                    )
                })?;
                let p = tokens.authenticate(token).ok_or_else(|| Status::unauthenticated("unknown token"))?;
                if !self.allowed.contains(&p.role) {
                    return Err(Status::permission_denied(format!(
                        "{} {} may not call the {}",
                        role_name(p.role),
                        p.name,
                        self.service
                    )));
                }
                p.clone()
            }
        };
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Admin => "admin",
        Role::Worker => "worker",
        Role::Metrics => "metrics",
    }
}

/// The caller of a request that passed a gate.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request.extensions().get::<Principal>().cloned().ok_or_else(|| Status::internal("request did not pass the gate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice-token-0123456789";

    #[test]
    fn a_tokens_file_names_principals_and_bad_lines_by_number() {
        let t = Tokens::parse(&format!(
            "# role name token\n\nuser alice {ALICE}   # a comment\nworker gpu-1 worker-token-0123456789\n"
        ))
        .unwrap();
        assert_eq!(t.authenticate(ALICE), Some(&Principal { role: Role::User, name: "alice".into() }));
        assert_eq!(t.authenticate("worker-token-0123456789").unwrap().role, Role::Worker);
        assert_eq!(t.authenticate("alice-token-012345678"), None);
        assert_eq!(t.authenticate(""), None);
        for (text, want) in [
            ("user alice", "line 1: expected ROLE NAME TOKEN, got 2 fields"),
            (
                "\nroot alice x0123456789012345678901",
                "line 2: role must be user, admin, worker or metrics, got \"root\"",
            ),
            ("user al/ice x0123456789012345678901", "line 1: name \"al/ice\" must be"),
            ("user alice short", "line 1: the token of alice is shorter than 20 characters"),
            (
                "user alice x0123456789012345678901\nadmin bob x0123456789012345678901",
                "line 2: the token of bob is already another line's token",
            ),
            ("# nobody\n", "names no principal"),
            ("user alice #x0123456789012345678901", "line 1: expected ROLE NAME TOKEN, got 2 fields"),
        ] {
            let err = Tokens::parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains("x0123456789"), "an error quotes a token: {err}");
        }
        // A `#` inside a token is the token's: it once cut the token to what came before it.
        let hashed = "abc#0123456789abcdefghij";
        let t = Tokens::parse(&format!("user alice {hashed} # the rest is a comment")).unwrap();
        assert!(t.authenticate(hashed).is_some());
        assert!(t.authenticate("abc").is_none());
        assert!(t.weak().is_empty());
        // Long enough, and guessable: named, so `serve` can warn.
        let t = Tokens::parse(
            "user alice aaaaaaaaaaaaaaaaaaaa\nuser bob 01010101010101010101\nadmin ops 0f3a9c2e7b1d4f6a8e0c2b4d",
        )
        .unwrap();
        assert_eq!(t.weak(), ["alice", "bob"]);
    }

    #[test]
    fn the_gate_checks_token_and_role_and_hands_on_the_principal() {
        use tonic::service::Interceptor;
        let tokens = Some(Arc::new(Tokens::parse(&format!("user alice {ALICE}")).unwrap()));
        let mut jobs = Gate::new(tokens.clone(), "job API", &[Role::User, Role::Admin]);
        let mut workers = Gate::new(tokens, "worker API", &[Role::Worker]);
        let call = |gate: &mut Gate, token: Option<&str>| {
            let mut r = Request::new(());
            if let Some(t) = token {
                r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            gate.call(r).map(|r| principal(&r).unwrap())
        };
        assert_eq!(call(&mut jobs, Some(ALICE)).unwrap().name, "alice");
        assert_eq!(call(&mut jobs, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(call(&mut jobs, Some("nope")).unwrap_err().code(), tonic::Code::Unauthenticated);
        let denied = call(&mut workers, Some(ALICE)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(denied.message(), "user alice may not call the worker API");
        let mut open = Gate::new(None, "job API", &[Role::User, Role::Admin]);
        assert_eq!(call(&mut open, None).unwrap(), Principal::open());
    }
}
