/*
 * A stand-in bcryptprimitives.dll for running Windows test executables under Wine 8.0.
 *
 * Rust's std (since 1.78) draws its random bytes (HashMap keys) from
 * `ProcessPrng` in bcryptprimitives.dll. Wine gained that DLL only after 8.0, so on
 * Debian 12's Wine every Rust executable fails to start. scripts/windows-setup.sh builds
 * this file with mingw; scripts/windows/wine-runner.sh puts the result beside each
 * executable, where the loader looks first. Real Windows (8 and later) has the real DLL,
 * and nothing here is ever shipped.
 *
 * Signature, as documented: BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData), which
 * always returns TRUE. RtlGenRandom (exported by advapi32 as SystemFunction036) takes
 * a ULONG length, so larger requests are served in chunks.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
    while (size > 0) {
        ULONG chunk = size > 0x10000000 ? 0x10000000 : (ULONG)size;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        size -= chunk;
    }
    return TRUE;
}
