"""The accuracies bnjax is measured against: BN-only CIFAR-10 test accuracy (%) after the paper's
160 epochs, read off its figures (about +-1-2 points), and a public PyTorch reproduction of
open_lth's model (docs/REPRODUCTION.md's full-budget tables)."""

PAPER_BN_ONLY_160 = {"cifar_resnet_14": 48, "cifar_resnet_32": 57, "cifar_resnet_56": 63,
                     "cifar_resnet_110": 70, "cifar_resnet_218": 76, "cifar_resnet_434": 80,
                     "cifar_resnet_866": 82, "cifar_resnet_14_32": 53, "cifar_resnet_14_64": 60}
PYTORCH_BN_ONLY_160 = {"cifar_resnet_14": 46.9, "cifar_resnet_32": 56.9, "cifar_resnet_56": 62.6,
                       "cifar_resnet_110": 70.0, "cifar_resnet_218": 76.0}


def paper_cell(model: str) -> str:
    """'~57' for a network the paper reports, '-' for one it does not."""
    return f"~{PAPER_BN_ONLY_160[model]}" if model in PAPER_BN_ONLY_160 else "-"


def pytorch_cell(model: str) -> str:
    return f"{PYTORCH_BN_ONLY_160[model]:.1f}" if model in PYTORCH_BN_ONLY_160 else "-"
