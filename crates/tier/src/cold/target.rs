//! Where a cold store lives: a local directory (a path or `file://` URL) or an S3-compatible
//! bucket (`s3://bucket/prefix`), built with object_store's own builders.

use super::ColdError;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// An opened object store and the root of the cold tier inside it.
pub(crate) struct Target {
    pub store: Arc<dyn ObjectStore>,
    pub root: Path,
    /// The directory, for a local store: object_store hides its staged uploads (`name#N`) from
    /// listings, so cleanup of those walks the directory itself.
    pub local_dir: Option<PathBuf>,
}

/// Opens the store `url` names. S3 settings come from the usual `AWS_*` environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), then
/// from `options` (object_store's S3 keys, e.g. `aws_endpoint`). Plain HTTP is allowed for a
/// loopback endpoint (a local MinIO or moto), otherwise only when configured (`aws_allow_http`).
pub(crate) fn open(url: &str, options: &[(String, String)]) -> Result<Target, ColdError> {
    let bad = |reason: String| ColdError::Url {
        url: url.to_string(),
        reason,
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name".into()));
        }
        // An unreachable endpoint fails within about half a minute (the default retries for
        // three minutes, so a wrong URL held startup that long); requests still retry.
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(60));
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(client);
        for (k, v) in options {
            let key: AmazonS3ConfigKey =
                k.parse().map_err(|e| bad(format!("option {k:?}: {e}")))?;
            b = b.with_config(key, v);
        }
        let loopback = b
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| loopback_http(&e));
        if loopback {
            b = b.with_allow_http(true);
        }
        let store = b.build().map_err(|e| bad(e.to_string()))?;
        let root = Path::parse(prefix.trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        return Ok(Target {
            store: Arc::new(store),
            root,
            local_dir: None,
        });
    }
    let dir = if url.starts_with("file://") {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| bad("not an absolute file URL".into()))?
    } else if url.contains("://") {
        return Err(bad(
            "only s3:// and file:// URLs and plain paths are supported".into(),
        ));
    } else {
        PathBuf::from(url)
    };
    std::fs::create_dir_all(&dir).map_err(|source| ColdError::Io {
        path: dir.clone(),
        source,
    })?;
    // fsync before the rename that publishes a file, so a power cut cannot leave a published
    // name over unwritten blocks (nor a manifest naming such a file); automatic cleanup removes
    // a day directory once compaction has deleted its last file.
    let store = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| bad(e.to_string()))?
        .with_fsync(true)
        .with_automatic_cleanup(true);
    Ok(Target {
        store: Arc::new(store),
        root: Path::default(),
        local_dir: Some(dir),
    })
}

/// True for an `http://` endpoint on a loopback host.
fn loopback_http(endpoint: &str) -> bool {
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
            None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        assert!(loopback_http("http://127.0.0.1:9000"));
        assert!(loopback_http("http://localhost:9000/"));
        assert!(loopback_http("http://[::1]:9000"));
        assert!(!loopback_http("https://127.0.0.1:9000"));
        assert!(!loopback_http("http://10.0.0.1:9000"));
        assert!(!loopback_http("http://s3.example.com"));
    }

    #[test]
    fn rejects_other_schemes() {
        assert!(matches!(open("gs://b/p", &[]), Err(ColdError::Url { .. })));
        assert!(matches!(open("s3:///p", &[]), Err(ColdError::Url { .. })));
    }
}
