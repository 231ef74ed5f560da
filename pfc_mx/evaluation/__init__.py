"""Evaluation: `.bin` verification (verification.py), IJB-B/C 1:1 (ijb.py, alignment.py), and
loading MXNet / legacy / ONNX models as embedding functions for the tools (model_loader.py)."""
