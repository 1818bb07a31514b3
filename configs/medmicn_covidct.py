"""Med-MICN on COVID-CT (UCSD-AI4H CT slices, CT_COVID vs CT_NonCOVID, official split lists)
with the 8 concepts of the paper's Table 3 read from covidct_concepts.csv.

Variants (comma list after ``:``): ``synthetic`` (procedural images whose concepts are planted
primitives and whose class is a known rule of them; tiny ResNet; fair protocol),
``backbone=NAME``, ``protocol=faithful|fair``, ``image_size=N``, ``runlocal``. See
jaxproto/methods/medmicn/config.py.
"""

from jaxproto.methods.medmicn import config


def get_config(arg=None):
    return config.get_config("covidct", arg)
