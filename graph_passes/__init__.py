"""Graph passes over ONNX models: canonicalize, legalize for a target's op set, count coverage."""
