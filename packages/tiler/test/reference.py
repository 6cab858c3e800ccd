"""Independent reference decodes for the slide reader's tests (Debian's python3-openslide, python3-tifffile, Pillow).

  reference.py openslide <slide> <level> <x> <y> <w> <h>   RGB bytes of a region of a level (level pixels), OpenSlide
  reference.py tiles <slide> <level> <x> <y> <w> <h>       the same, each JPEG tile decoded by Pillow (libjpeg's own
                                                           colour rule), structure from tifffile (OME-TIFF included)
  reference.py dicom <instance.dcm> <level> <x> <y> <w> <h> the same from one DICOM instance, its frames decoded by
                                                           pydicom (Pillow for JPEG), placed in TILED_FULL order
  reference.py props <slide>                               OpenSlide's levels, downsamples and µm/px as JSON

Regions are written to stdout as raw interleaved RGB, rows top to bottom.
"""
import io
import json
import sys


def openslide_region(path, level, x, y, w, h):
    import openslide

    slide = openslide.OpenSlide(path)
    ds = slide.level_downsamples[level]
    # OpenSlide takes level-0 coordinates; callers use regions whose origin maps exactly.
    image = slide.read_region((round(x * ds), round(y * ds)), level, (w, h)).convert('RGB')
    return image.tobytes()


def tile_region(path, level, x, y, w, h):
    import numpy as np
    import tifffile
    from PIL import Image

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if level > 0 and page.subifds:
            # SubIFD pyramids (OME-TIFF): the level's IFD is read where the first IFD points.
            tif.filehandle.seek(page.subifds[level - 1])
            page = tifffile.TiffPage(tif, index=(0, level - 1))
        elif level > 0:
            page = tif.pages[level]
        if page.compression != 7:
            raise SystemExit(f'tiles reference: expected JPEG tiles, got compression {page.compression}')
        tables = page.jpegtables
        th, tw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        columns = -(-page.imagewidth // tw)
        out = np.zeros((h, w, 3), dtype=np.uint8)
        fh = tif.filehandle
        for row in range(y // th, (y + h - 1) // th + 1):
            for col in range(x // tw, (x + w - 1) // tw + 1):
                index = row * columns + col
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
                if tables is not None and len(tables) > 4:
                    data = tables[:-2] + data[2:]
                tile = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
                tx, ty = col * tw, row * th
                x0, y0 = max(x, tx), max(y, ty)
                x1 = min(x + w, tx + tile.shape[1], page.imagewidth)
                y1 = min(y + h, ty + tile.shape[0], page.imagelength)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
        return out.tobytes()


def dicom_region(path, level, x, y, w, h):
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    if frames.ndim == 3 and int(getattr(ds, 'NumberOfFrames', 1)) == 1:
        frames = frames[None]
    th, tw = int(ds.Rows), int(ds.Columns)
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    columns = -(-width // tw)
    rows = -(-height // th)
    full = np.full((rows * th, columns * tw, 3), 255, dtype=np.uint8)
    for i in range(min(len(frames), rows * columns)):
        r, c = divmod(i, columns)
        full[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = frames[i].reshape(th, tw, -1)[..., :3]
    return full[y : y + h, x : x + w].tobytes()


def props(path):
    import openslide

    slide = openslide.OpenSlide(path)
    p = slide.properties
    mpp = p.get('openslide.mpp-x')
    return {
        'vendor': p.get('openslide.vendor'),
        'levels': [list(d) for d in slide.level_dimensions],
        'downsamples': list(slide.level_downsamples),
        'mpp': [float(p['openslide.mpp-x']), float(p['openslide.mpp-y'])] if mpp else None,
    }


def main(argv):
    mode, path = argv[1], argv[2]
    if mode == 'props':
        sys.stdout.write(json.dumps(props(path)))
        return
    level, x, y, w, h = (int(v) for v in argv[3:8])
    readers = {'openslide': openslide_region, 'tiles': tile_region, 'dicom': dicom_region}
    data = readers[mode](path, level, x, y, w, h)
    sys.stdout.buffer.write(data)


if __name__ == '__main__':
    main(sys.argv)
