"""The compiler's front and middle: trace the model to ONNX, pick a lowering target, run the passes and write an
engine set (``build``), timing each stage."""
