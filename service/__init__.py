"""The translation service: bundle loading, onnxruntime engine, batching, HTTP API. No torch here."""
