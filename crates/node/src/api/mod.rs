//! The node's HTTP surfaces: the router, the native API and the connection loop (`server`), KServe v2
//! (`kserve`),
//! the chain endpoints (`chain`), the OpenAI-compatible API (`openai` for language models,
//! `embeddings` for sentence-embedding models) and OpenGradient SDK compatibility (`opengradient`). They call into the roles and the shared state, never the other way.

pub mod chain;
pub mod embeddings;
pub mod kserve;
pub mod openai;
pub mod opengradient;
pub mod server;
