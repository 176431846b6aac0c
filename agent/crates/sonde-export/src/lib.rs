//! Agent to collector export: batching, backpressure, disk spool, ordered lossless redelivery
