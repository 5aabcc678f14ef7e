; A two-stage boot program for the SeaBIOS boot tests, assembled by the tests with
; `nasm -f bin -D STAGE2_SECTORS=N`.
;
; Stage 1 (the MBR, 512 bytes at 0x7c00) reads stage 2 through INT 13h extended reads, a few
; sectors per call so that the disk's request queue serves several requests, to 0x10000, memory
; no code ran from yet (under TCG, code read over code already executed can run stale). Stage 2
; checks the last sector's signature, so that every sector arrived at its place, then prints the
; guest marker of scripts/run-vm.sh on COM1 and ends QEMU through isa-debug-exit.

%ifndef STAGE2_SECTORS
%define STAGE2_SECTORS 64
%endif
%define SECTORS_PER_READ 8
%define STAGE2_SEGMENT 0x1000
%define COM1 0x3f8
%define DEBUG_EXIT 0xf4

        bits 16
        org 0x7c00

stage1:
        ; Some BIOSes enter at 07c0:0000: make cs 0, so that stage 2 can far-call `print`.
        jmp 0:.start
.start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7c00
        sti
        mov [boot_drive], dl
        mov si, msg_stage1
        call 0:print

        mov word [dap.segment], STAGE2_SEGMENT
        mov dword [dap.lba], 1
        mov cx, STAGE2_SECTORS / SECTORS_PER_READ
.read:
        push cx
        mov si, dap
        mov dl, [boot_drive]
        mov ah, 0x42
        int 0x13
        pop cx
        jc read_failed
        add word [dap.segment], SECTORS_PER_READ * 512 / 16
        add dword [dap.lba], SECTORS_PER_READ
        loop .read
        jmp STAGE2_SEGMENT:0

read_failed:
        mov si, msg_read_failed
        call 0:print
        mov al, 2
        jmp exit

; Prints the NUL-terminated string at ds:si on COM1; called far, from either stage.
print:
        mov dx, COM1
.next:
        lodsb
        test al, al
        jz .done
        out dx, al
        jmp .next
.done:
        retf

; Ends QEMU with status (al << 1) | 1.
exit:
        out DEBUG_EXIT, al
        hlt
        jmp exit

boot_drive: db 0
msg_stage1: db "VUS-BOOT: stage 1 reading stage 2", 13, 10, 0
msg_read_failed: db "VUS-BOOT: INT 13h read failed", 13, 10, "VUS-GUEST-EXIT=2", 13, 10, 0

        align 4
dap:    db 16, 0
        dw SECTORS_PER_READ
        dw 0
.segment: dw 0
.lba:   dq 0

        times 510 - ($ - $$) db 0
        dw 0xaa55

; Stage 2: runs at STAGE2_SEGMENT:0 and uses stage 1's routines, still at 0x7c00.
        section stage2 vstart=0 align=16
stage2:
        mov ax, cs
        mov ds, ax
        mov si, msg_stage2
        call 0:print
        mov ax, cs
        add ax, (STAGE2_SECTORS - 1) * 512 / 16
        mov es, ax
        mov si, expected
        xor di, di
        mov cx, expected_len
        cld
        repe cmpsb
        jne .corrupt
        mov si, msg_ok
        call 0:print
        xor al, al
        jmp 0:exit
.corrupt:
        mov si, msg_corrupt
        call 0:print
        mov al, 3
        jmp 0:exit

msg_stage2: db "VUS-BOOT: stage 2 running", 13, 10, 0
msg_ok: db "VUS-BOOT-MARKER: every sector of stage 2 arrived", 13, 10, "VUS-GUEST-EXIT=0", 13, 10, 0
msg_corrupt: db "VUS-BOOT: the last sector of stage 2 is wrong", 13, 10, "VUS-GUEST-EXIT=3", 13, 10, 0
expected: db "VUS-STAGE2-LAST-SECTOR"
expected_len equ $ - expected

        times (STAGE2_SECTORS - 1) * 512 - ($ - $$) db 0
        db "VUS-STAGE2-LAST-SECTOR"
        times STAGE2_SECTORS * 512 - ($ - $$) db 0
