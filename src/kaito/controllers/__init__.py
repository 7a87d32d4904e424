"""Controllers of the operator; today the workspace controller.

Controllers stand on `kaito.runtime`, read `kaito.presets` and `kaito.api`, and never
import `kaito.provisioner`: the two only meet through Machine objects (an import-linter
contract enforces it).
"""
