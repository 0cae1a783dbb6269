"""Style Latents from Image Folder on a shared server: it reads sub-folders of ComfyUI's input folder and
nothing else, never names a server path to the client, and refuses images too large to decode."""
import os
import struct
import urllib.request
import uuid
import zlib

import pytest
from PIL import Image

from hardening_common import (
    INPUT_DIR, assert_no_server_path, assert_still_serves, folder_graph, peak_memory_bytes,
    rejected_prompt, remove_session_files, tagged, write_style_images,
)

HTML_NAME = "<img src=x onerror=alert(1)>"
FOLDER_NODE = "ParticleRepulsionStyleLatentsFromFolder"


@pytest.fixture(scope="module", autouse=True)
def session_files():
    yield
    remove_session_files()


def folder_choices(server) -> list[str]:
    return server.object_info()[FOLDER_NODE]["input"]["required"]["folder"][0]


def upload_image(server, subfolder: str, file_name: str, contents: bytes) -> None:
    """POST /upload/image, as any client of the server may: it creates `input/<subfolder>/`."""
    boundary = uuid.uuid4().hex
    fields = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                     for name, value in (("subfolder", subfolder), ("type", "input")))
    file_head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file_name}"\r\n'
                 "Content-Type: image/png\r\n\r\n")
    body = (fields + file_head).encode() + contents + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + "/upload/image", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in its header and holds no image data (a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_the_folder_list_holds_only_safe_sub_folders_inside_the_input_folder(server, tiny_checkpoint, tmp_path):
    write_style_images(INPUT_DIR / tagged("styles"))
    write_style_images(tmp_path / "private photos")
    (INPUT_DIR / tagged("escape")).symlink_to(tmp_path / "private photos")
    upload_image(server, tagged(HTML_NAME), "0.png", (INPUT_DIR / tagged("styles") / "ink" / "0.png").read_bytes())
    assert (INPUT_DIR / tagged(HTML_NAME)).is_dir()  # anyone who reaches the server can make such a folder

    choices = folder_choices(server)
    assert tagged("styles") in choices
    assert tagged("escape") not in choices and tagged(HTML_NAME) not in choices
    assert not any("<" in choice or os.sep in choice for choice in choices)
    assert_still_serves(server, tiny_checkpoint)


@pytest.mark.parametrize("folder", ["/etc", "~", "..", "../input", "styles/../..", "ink", "escape", "absolute"])
def test_a_folder_outside_the_list_is_refused_before_anything_runs(server, tiny_checkpoint, folder):
    write_style_images(INPUT_DIR / tagged("styles"))
    value = {"styles/../..": f"{tagged('styles')}/../..", "ink": f"{tagged('styles')}/ink",
             "escape": tagged("escape"), "absolute": str(INPUT_DIR / tagged("styles"))}.get(folder, folder)
    answer = rejected_prompt(server, folder_graph(tiny_checkpoint, value).nodes)
    assert "value_not_in_list" in answer and "folder" in answer
    assert "ssl" not in answer and "passwd" not in answer  # what /etc held used to be listed in the error
    assert_still_serves(server, tiny_checkpoint)


def test_symlinked_images_leading_outside_the_input_folder_are_not_read(server, tiny_checkpoint, tmp_path):
    folder = tagged("linked")
    write_style_images(INPUT_DIR / folder, styles=("ink",))
    write_style_images(tmp_path, styles=("oil",))
    (INPUT_DIR / folder / "oil").mkdir()
    (tmp_path / "oil" / "0.png").replace(INPUT_DIR / folder / "oil" / "0.png")
    (INPUT_DIR / folder / "oil" / "1.png").symlink_to(tmp_path / "oil" / "1.png")
    (INPUT_DIR / folder / "oil" / "passwd.png").symlink_to("/etc/passwd")
    error = server.run_expecting_error(folder_graph(tiny_checkpoint, folder).nodes)
    assert "too few in: oil (1)" in error and f"own sub-folder of input/{folder} " in error
    assert_no_server_path(error)
    assert_still_serves(server, tiny_checkpoint)


def test_an_image_too_large_to_decode_is_refused_by_name_before_decoding(server, tiny_checkpoint):
    folder = tagged("big")
    write_style_images(INPUT_DIR / folder)
    Image.new("L", (10000, 10000)).save(INPUT_DIR / folder / "ink" / "big.png")  # 100 megapixels in ~100 KB
    assert os.path.getsize(INPUT_DIR / folder / "ink" / "big.png") < 400_000
    peak_before = peak_memory_bytes(server)
    error = server.run_expecting_error(folder_graph(tiny_checkpoint, folder).nodes)
    assert f"The image input/{folder}/ink/big.png is 10000x10000 pixels" in error and "megapixels" in error
    assert_no_server_path(error)
    assert peak_memory_bytes(server) - peak_before < 200 * 2**20  # decoding it took 2.7 GB
    assert_still_serves(server, tiny_checkpoint)


def test_a_decompression_bomb_and_a_disguised_format_are_refused_by_name(server, tiny_checkpoint):
    folder = tagged("disguised")
    write_style_images(INPUT_DIR / folder)
    (INPUT_DIR / folder / "ink" / "bomb.png").write_bytes(png_header_only(30000, 30000))  # over PIL's own limit
    error = server.run_expecting_error(folder_graph(tiny_checkpoint, folder).nodes)
    assert f"The image input/{folder}/ink/bomb.png" in error and "megapixels" in error
    (INPUT_DIR / folder / "ink" / "bomb.png").unlink()
    Image.new("RGB", (8, 8)).save(INPUT_DIR / folder / "oil" / "tiff.png", format="TIFF")
    error = server.run_expecting_error(folder_graph(tiny_checkpoint, folder).nodes)
    assert f"Cannot read the image input/{folder}/oil/tiff.png" in error
    assert_no_server_path(error)
    assert_still_serves(server, tiny_checkpoint)
