"""The transformer's layers: what they share with the official layout."""

import torch
import torch.nn.functional as F

from deformdetr.models.deformable_transformer import DeformableTransformerEncoderLayer


def test_the_feed_forward_block_in_training_is_linear_relu_dropout_linear_dropout_norm():
    torch.manual_seed(0)
    layer = DeformableTransformerEncoderLayer(d_model=32, d_ffn=64, dropout=0.3, n_levels=2, n_heads=4,
                                              n_points=2).train()
    x = torch.randn(2, 50, 32)
    torch.manual_seed(1)
    fused = layer._ffn(x)  # ReLU and the first dropout in one native pass
    torch.manual_seed(1)
    hidden = layer.dropout2(F.relu(layer.linear1(x)))
    expected = layer.norm2(x + layer.dropout3(layer.linear2(hidden)))
    assert torch.equal(fused, expected)
    assert not torch.equal(layer.eval()._ffn(x), fused)
