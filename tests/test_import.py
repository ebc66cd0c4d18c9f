import subprocess
import sys


def test_import_spherewatch_imports_no_optional_dependency():
    code = (
        "import sys, spherewatch, spherewatch.metrics\n"
        "heavy = ['tensorboard', 'mlflow', 'lightning', 'pytorch_lightning', 'transformers', 'accelerate',"
        " 'matplotlib', 'torch.utils.tensorboard']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at `import spherewatch`: {out.stdout.strip()}"


def test_package_is_installed_as_spherewatch_only():
    import importlib.util

    import spherewatch

    assert spherewatch.__file__.replace("\\", "/").endswith("monitor/__init__.py")
    assert importlib.util.find_spec("spherewatch.integrations") is not None
    out = subprocess.run(
        [sys.executable, "-c", "import monitor"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert out.returncode != 0  # nothing is installed under the generic name
