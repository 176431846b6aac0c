//! HTTP/1.x and HTTP/2 (gRPC) exchange reconstruction from reassembled byte streams
