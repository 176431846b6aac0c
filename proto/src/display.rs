//! Human-facing names shared by the collector and the CLI.

use crate::v1::{Classification, EndpointKey, OwaspCategory, Protocol, ServiceKey, Severity};

impl ServiceKey {
    /// Display name of a service: the serving workload and port (`deployment/shop/api:8080`,
    /// `nginx.service:80`, behind `authority@` when the Host header is part of the key), else the
    /// Kubernetes Service and port (`service/shop/api:80`), else the authority, else
    /// `addr:port`, else `unknown`. One token without spaces.
    pub fn display_name(&self) -> String {
        let at = |name: &str| {
            let mut s = String::new();
            if !self.authority.is_empty() {
                s.push_str(&self.authority);
                s.push('@');
            }
            // Executable names may hold spaces; the endpoint key splits on them.
            s.push_str(&name.replace(char::is_whitespace, "_"));
            if self.server_port != 0 {
                s.push_str(&format!(":{}", self.server_port));
            }
            s
        };
        if let Some(w) = self.workload.as_ref().filter(|w| !w.name.is_empty()) {
            at(&w.name)
        } else if !self.kubernetes_service.is_empty() {
            at(&format!("service/{}", self.kubernetes_service))
        } else if !self.authority.is_empty() {
            self.authority.clone()
        } else if !self.server_addr.is_empty() {
            if self.server_addr.contains(':') {
                format!("[{}]:{}", self.server_addr, self.server_port)
            } else {
                format!("{}:{}", self.server_addr, self.server_port)
            }
        } else {
            "unknown".to_string()
        }
    }
}

impl EndpointKey {
    /// `service METHOD /template`, the form anomalies use to name their endpoint.
    pub fn display_name(&self) -> String {
        let service = self.service.as_ref().map(ServiceKey::display_name);
        format!(
            "{} {} {}",
            service.as_deref().unwrap_or("unknown"),
            self.method,
            self.path_template
        )
    }
}

impl Protocol {
    pub fn short_name(self) -> &'static str {
        match self {
            Protocol::Unspecified => "-",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

impl Classification {
    pub fn short_name(self) -> &'static str {
        match self {
            Classification::Unknown => "unknown",
            Classification::Managed => "managed",
            Classification::Shadow => "shadow",
            Classification::Zombie => "zombie",
        }
    }
}

impl Severity {
    pub fn short_name(self) -> &'static str {
        match self {
            Severity::Unspecified => "-",
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses `info|low|medium|high|critical` (case-insensitive).
    pub fn from_short_name(name: &str) -> Option<Severity> {
        Some(match name.to_ascii_lowercase().as_str() {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

impl OwaspCategory {
    /// The short code, e.g. `API1:2023`.
    pub fn code(self) -> &'static str {
        match self {
            OwaspCategory::Unspecified => "-",
            OwaspCategory::Api1Bola => "API1:2023",
            OwaspCategory::Api2BrokenAuth => "API2:2023",
            OwaspCategory::Api3PropertyAuth => "API3:2023",
            OwaspCategory::Api4ResourceConsumption => "API4:2023",
            OwaspCategory::Api5FunctionAuth => "API5:2023",
            OwaspCategory::Api6BusinessFlows => "API6:2023",
            OwaspCategory::Api7Ssrf => "API7:2023",
            OwaspCategory::Api8Misconfiguration => "API8:2023",
            OwaspCategory::Api9Inventory => "API9:2023",
            OwaspCategory::Api10UnsafeConsumption => "API10:2023",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::{ServiceKey, Workload};

    fn key(authority: &str, workload: &str, kubernetes_service: &str) -> ServiceKey {
        ServiceKey {
            server_addr: "10.244.1.17".into(),
            server_port: 8080,
            authority: authority.into(),
            process: "python3".into(),
            workload: (!workload.is_empty()).then(|| Workload {
                name: workload.into(),
                ..Workload::default()
            }),
            kubernetes_service: kubernetes_service.into(),
        }
    }

    #[test]
    fn services_are_named_by_workload_then_kubernetes_service_then_authority_then_address() {
        assert_eq!(
            key("", "deployment/shop/api", "shop/api").display_name(),
            "deployment/shop/api:8080"
        );
        assert_eq!(
            key("a.example", "nginx.service", "").display_name(),
            "a.example@nginx.service:8080"
        );
        assert_eq!(
            key("", "", "shop/api").display_name(),
            "service/shop/api:8080"
        );
        assert_eq!(key("a.example", "", "").display_name(), "a.example");
        assert_eq!(key("", "", "").display_name(), "10.244.1.17:8080");
        assert_eq!(
            key("", "my server", "").display_name(),
            "my_server:8080",
            "one token"
        );
    }
}
