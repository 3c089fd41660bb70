"""`serving local`: the development model server, with TensorFlow Serving's REST and gRPC API
(see docs/tf-serving-compatibility.md)."""
