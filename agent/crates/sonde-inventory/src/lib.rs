//! API inventory: endpoints, path templates, auth schemes, sensitive data, declared-spec classification
