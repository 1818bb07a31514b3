"""Visualisation: heat-map overlays (`overlays`), HTML reports (`report`), prototype atlas
(`atlas`) and line plots (`plots`). Import the submodules directly."""
