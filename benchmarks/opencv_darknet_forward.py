"""OpenCV 4's Darknet reader, run in its own environment (numpy + opencv-python-headless<5 only):
reads a .cfg and .weights, runs the network on an NCHW float32 input and saves the requested
layer outputs. Used by yolov3_darknet_parity.py; exchanges data through .npy/.npz files only.

    python opencv_darknet_forward.py CFG WEIGHTS INPUT.npy OUT.npz LAYER [LAYER ...]
"""

import sys

import cv2
import numpy as np


def main() -> None:
    cfg, weights, inp, out, *layers = sys.argv[1:]
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if "--no-winograd" in layers:
        layers.remove("--no-winograd")
        net.enableWinograd(False)  # OpenCV >= 4.7 runs 3x3 convs through Winograd transforms by default
    images = np.load(inp)
    results = {name: [] for name in layers}
    for image in images:  # one image per forward, as OpenCV's Darknet yolo layers expect
        net.setInput(image[None].astype(np.float32))
        for name, value in zip(layers, net.forward(layers)):
            results[name].append(np.asarray(value))
    np.savez(out, opencv_version=cv2.__version__, **{k: np.stack(v) for k, v in results.items()})


if __name__ == "__main__":
    main()
