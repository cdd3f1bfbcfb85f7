//! Region, zone and instance type from a provider's instance metadata service
//! (169.254.169.254 by default; the base URL is configurable so tests serve it on
//! loopback). Asked only on a provider DMI identified, within a short total timeout.
//!
//! Protocols (cloud-init DataSourceEc2.py, DataSourceGCE.py, DataSourceAzure.py,
//! DataSourceOracle.py):
//! - AWS IMDSv2: PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds, then
//!   GETs under /latest/meta-data/ with X-aws-ec2-metadata-token.
//! - GCP: /computeMetadata/v1/instance/{zone,machine-type} with Metadata-Flavor: Google.
//! - Azure: /metadata/instance?api-version=2021-08-01 with Metadata: true
//!   (compute.location, compute.vmSize, compute.zone).
//! - OCI: /opc/v2/instance/ with Authorization: Bearer Oracle (canonicalRegionName,
//!   availabilityDomain, shape).

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The link-local address every supported provider serves its metadata on.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// Largest metadata document read (Azure's instance document is a few KiB).
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Lifetime asked for an IMDSv2 token: long enough for the few reads at start-up.
const AWS_TOKEN_TTL_SECONDS: &str = "60";

/// What the metadata service said; empty strings where it said nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataFacts {
    pub region: String,
    pub zone: String,
    pub instance_type: String,
}

/// Why the metadata service could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid metadata URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url} sent a document that is not what {provider} sends: {reason}")]
    Document {
        url: String,
        provider: &'static str,
        reason: String,
    },
    #[error("{provider} does not have a metadata service gpulse reads")]
    Unsupported { provider: String },
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(base: &str, connect_timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, MetadataError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| MetadataError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| MetadataError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(MetadataError::Status { url, status });
        }
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| MetadataError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<String, MetadataError> {
        self.call(Method::GET, path, headers).await
    }
}

/// The last segment of a GCP resource path ("projects/1/zones/us-central1-a").
fn last_segment(s: &str) -> String {
    s.rsplit('/').next().unwrap_or_default().to_string()
}

fn json_str(v: &serde_json::Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    cur.as_str().unwrap_or_default().to_string()
}

fn document(
    url: &str,
    provider: &'static str,
    body: &str,
) -> Result<serde_json::Value, MetadataError> {
    serde_json::from_str(body).map_err(|e| MetadataError::Document {
        url: url.to_string(),
        provider,
        reason: e.to_string(),
    })
}

/// Asks `provider`'s metadata service at `base` for region, zone and instance type.
/// The caller bounds the whole exchange with its own timeout.
pub async fn fetch(
    provider: &str,
    base: &str,
    connect_timeout: Duration,
) -> Result<MetadataFacts, MetadataError> {
    let http = Http::new(base, connect_timeout);
    match provider {
        "aws" => {
            let token = http
                .call(
                    Method::PUT,
                    "/latest/api/token",
                    &[(
                        "X-aws-ec2-metadata-token-ttl-seconds",
                        AWS_TOKEN_TTL_SECONDS,
                    )],
                )
                .await?;
            let h = [("X-aws-ec2-metadata-token", token.as_str())];
            Ok(MetadataFacts {
                region: http.get("/latest/meta-data/placement/region", &h).await?,
                zone: http
                    .get("/latest/meta-data/placement/availability-zone", &h)
                    .await?,
                instance_type: http.get("/latest/meta-data/instance-type", &h).await?,
            })
        }
        "gcp" => {
            let h = [("Metadata-Flavor", "Google")];
            let zone = last_segment(&http.get("/computeMetadata/v1/instance/zone", &h).await?);
            let machine = http
                .get("/computeMetadata/v1/instance/machine-type", &h)
                .await?;
            // A GCP zone is its region plus a letter: us-central1-a is in us-central1.
            let region = zone
                .rsplit_once('-')
                .map(|(r, _)| r.to_string())
                .unwrap_or_default();
            Ok(MetadataFacts {
                region,
                zone,
                instance_type: last_segment(&machine),
            })
        }
        "azure" => {
            let path = "/metadata/instance?api-version=2021-08-01";
            let body = http.get(path, &[("Metadata", "true")]).await?;
            let v = document(path, "azure", &body)?;
            let region = json_str(&v, &["compute", "location"]);
            let zone = json_str(&v, &["compute", "zone"]);
            Ok(MetadataFacts {
                zone: if zone.is_empty() {
                    String::new()
                } else {
                    format!("{region}-{zone}")
                },
                region,
                instance_type: json_str(&v, &["compute", "vmSize"]),
            })
        }
        "oci" => {
            let path = "/opc/v2/instance/";
            let body = http
                .get(path, &[("Authorization", "Bearer Oracle")])
                .await?;
            let v = document(path, "oci", &body)?;
            let mut region = json_str(&v, &["canonicalRegionName"]);
            if region.is_empty() {
                region = json_str(&v, &["region"]);
            }
            Ok(MetadataFacts {
                region,
                zone: json_str(&v, &["availabilityDomain"]),
                instance_type: json_str(&v, &["shape"]),
            })
        }
        other => Err(MetadataError::Unsupported {
            provider: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::{get, put};

    /// Serves `router` on loopback and returns its base URL.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn require(headers: &HeaderMap, name: &str, value: &str) -> Result<(), StatusCode> {
        match headers.get(name).and_then(|v| v.to_str().ok()) {
            Some(v) if v == value => Ok(()),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn aws_uses_the_imdsv2_token_flow() {
        let token = "AQAEAFakeToken==";
        let with_token = move |body: &'static str| {
            move |h: HeaderMap| async move {
                require(&h, "x-aws-ec2-metadata-token", token).map(|()| body)
            }
        };
        let router = Router::new()
            .route(
                "/latest/api/token",
                put(move |h: HeaderMap| async move {
                    if h.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
                        Ok(token)
                    } else {
                        Err(StatusCode::BAD_REQUEST)
                    }
                }),
            )
            .route(
                "/latest/meta-data/placement/region",
                get(with_token("us-east-1")),
            )
            .route(
                "/latest/meta-data/placement/availability-zone",
                get(with_token("us-east-1a")),
            )
            .route(
                "/latest/meta-data/instance-type",
                get(with_token("p5.48xlarge")),
            );
        let base = serve(router).await;
        let facts = fetch("aws", &base, TIMEOUT).await.unwrap();
        assert_eq!(
            facts,
            MetadataFacts {
                region: "us-east-1".into(),
                zone: "us-east-1a".into(),
                instance_type: "p5.48xlarge".into(),
            }
        );
    }

    #[tokio::test]
    async fn gcp_sends_the_flavor_header_and_reads_resource_paths() {
        let router = Router::new()
            .route(
                "/computeMetadata/v1/instance/zone",
                get(|h: HeaderMap| async move {
                    require(&h, "metadata-flavor", "Google")
                        .map(|()| "projects/123/zones/us-central1-a")
                }),
            )
            .route(
                "/computeMetadata/v1/instance/machine-type",
                get(|h: HeaderMap| async move {
                    require(&h, "metadata-flavor", "Google")
                        .map(|()| "projects/123/machineTypes/a3-highgpu-8g")
                }),
            );
        let facts = fetch("gcp", &serve(router).await, TIMEOUT).await.unwrap();
        assert_eq!(facts.region, "us-central1");
        assert_eq!(facts.zone, "us-central1-a");
        assert_eq!(facts.instance_type, "a3-highgpu-8g");
    }

    #[tokio::test]
    async fn azure_reads_the_instance_document() {
        let router = Router::new().route(
            "/metadata/instance",
            get(|h: HeaderMap, q: axum::extract::RawQuery| async move {
                require(&h, "metadata", "true")?;
                if q.0.as_deref() != Some("api-version=2021-08-01") {
                    return Err(StatusCode::BAD_REQUEST);
                }
                Ok(r#"{"compute":{"location":"eastus","vmSize":"Standard_ND96isr_H100_v5","zone":"2","name":"nd-01"},"network":{}}"#)
            }),
        );
        let facts = fetch("azure", &serve(router).await, TIMEOUT).await.unwrap();
        assert_eq!(facts.region, "eastus");
        assert_eq!(facts.zone, "eastus-2");
        assert_eq!(facts.instance_type, "Standard_ND96isr_H100_v5");
    }

    #[tokio::test]
    async fn oci_sends_the_bearer_header_and_reads_the_v2_document() {
        let router = Router::new().route(
            "/opc/v2/instance/",
            get(|h: HeaderMap| async move {
                require(&h, "authorization", "Bearer Oracle").map(|()| {
                    r#"{"availabilityDomain":"Uocm:US-ASHBURN-AD-1","canonicalRegionName":"us-ashburn-1","region":"iad","shape":"BM.GPU.H100.8"}"#
                })
            }),
        );
        let facts = fetch("oci", &serve(router).await, TIMEOUT).await.unwrap();
        assert_eq!(facts.region, "us-ashburn-1");
        assert_eq!(facts.zone, "Uocm:US-ASHBURN-AD-1");
        assert_eq!(facts.instance_type, "BM.GPU.H100.8");
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_that_names_the_url() {
        let router =
            Router::new().route("/opc/v2/instance/", get(|| async { StatusCode::NOT_FOUND }));
        let base = serve(router).await;
        let err = fetch("oci", &base, TIMEOUT).await.unwrap_err().to_string();
        assert!(
            err.contains("/opc/v2/instance/") && err.contains("404"),
            "{err}"
        );
        assert!(matches!(
            fetch("hetzner", &base, TIMEOUT).await,
            Err(MetadataError::Unsupported { .. })
        ));
    }
}
