"""`serving local`: the development model server, with TensorFlow Serving's REST and gRPC API
(see README "Compared with TF Serving 2.20")."""
