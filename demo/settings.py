"""The demo's settings, as the TOML files an operator would write; apart from the launcher, so
that reading them loads no models and no report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomli_w

from agent.config import site_toml


@dataclass(frozen=True)
class DemoSettings:
    """Everything that shapes the demo's choice, in one place (the tests read it).

    LoRA candidates (adapters of a few MB) on short checkable tasks, learning rates two orders
    of magnitude apart and enough optimizer steps per epoch that the hyperparameters change what
    the candidates write, inside ten minutes on two CPU cores with three sites.
    """

    optimizers: tuple[str, ...] = ("sgd", "adamw")
    learning_rates: tuple[float, ...] = (3e-4, 3e-1)
    schedulers: tuple[str, ...] = ("cosine",)
    epochs: tuple[int, ...] = (1, 2)
    lora_rank: int = 8
    lora_top_layers: int = 8
    """LoRA on the last 8 of 30 layers: backpropagation stops there, a step costs half."""
    train_examples: int = 64
    steps_per_epoch: int = 6
    batch_size: int = 1
    """One example a step: more updates for the same compute (the demo's CPU is the limit)."""
    max_length: int = 96
    validation_items: int = 8
    max_new_tokens: int = 12
    blocks: int = 2
    chunk_items: int = 4
    baseline: str = "alpaca-lora"
    """The default recipe the choice is measured against, a config of the grid: the demo's
    counterpart of Alpaca's recipe (the paper grid's `alpaca-baseline`, AdamW with cosine decay
    for 3 epochs) for LoRA is alpaca-lora's: AdamW at 3e-4, the lower of the grid's learning
    rates, for the most epochs the grid has (2, the nearest to 3)."""

    def baseline_params(self) -> dict[str, object]:
        return {
            "optimizer": "adamw",
            "learning_rate": min(self.learning_rates),
            "scheduler": "cosine",
            "epochs": max(self.epochs),
            "finetune": "lora",
            "lora_rank": self.lora_rank,
        }

    @property
    def configs(self) -> int:
        return (
            len(self.optimizers) * len(self.learning_rates) * len(self.schedulers)
            * len(self.epochs)
        )  # fmt: skip

    def space_toml(self) -> str:
        return tomli_w.dumps(
            {
                "grid": {  # epochs first: a paper block holds one epoch count, all optimizers
                    "epochs": list(self.epochs),
                    "optimizer": list(self.optimizers),
                    "learning_rate": list(self.learning_rates),
                    "scheduler": list(self.schedulers),
                    "finetune": ["lora"],
                    "lora_rank": [self.lora_rank],
                },
                "named": {self.baseline: self.baseline_params()},
            }
        )

    def site_toml(self, name: str, seed: int, superlink: str, port: int, ca_file: Path) -> str:
        return site_toml(
            name,
            seed,
            {
                "site": {"data_dir": "."},
                "data": {
                    "train_examples": self.train_examples,
                    "validation_items": self.validation_items,
                },
                "model": {
                    "max_length": self.max_length,
                    "batch_size": self.batch_size,
                    "max_steps_per_epoch": self.steps_per_epoch,
                    "lora_top_layers": self.lora_top_layers,
                    "max_new_tokens": self.max_new_tokens,
                },
                "judge": {"spec": "builtin"},
                "flower": {
                    "superlink": superlink,
                    "clientappio_port": port,
                    "root_certificates": str(ca_file),
                },
            },
        )

    def federation_toml(self, selection_mode: str, sites: int, superlink: str) -> str:
        return tomli_w.dumps(
            {
                "run": {
                    "name": f"demo-{selection_mode}",
                    "space": "space.toml",
                    "state_dir": "coordinator",
                    "database": "coordinator.sqlite",
                },
                "selection": {
                    "selection_mode": selection_mode,
                    "min_sites": sites,
                    "wait_for_sites": 120.0,
                    "round_timeout": 30.0,
                    # every poll starts a ClientApp process per site: poll sparingly while the
                    # sites train, as their CPU is the demo's bottleneck
                    "retry_seconds": 2.0,
                    "max_retry_seconds": 30.0,
                    "patience": 5,
                    "validation_items": self.validation_items,
                    "judge_mode": "score",
                    "blocks": self.blocks,
                    "chunk_items": self.chunk_items,
                    "secure_aggregation": "when-possible",
                    "baseline": self.baseline,
                },
                "superlink": {"address": superlink, "certificates": "certs"},
            }
        )


DEMO = DemoSettings()
