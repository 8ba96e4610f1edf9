from enpheeph_onnx.cli import main

main(prog_name="enpheeph-onnx")
